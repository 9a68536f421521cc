package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// The member commands change the cluster's membership through Raft, one
// change at a time; the leader decides, and refuses a change that would
// leave the cluster unable to commit.

const memberIDHelp = "ID is the member's hex id, as 'member list' shows it, or its name (an id wins over a\n" +
	"name that reads the same)."

var memberListCommand = command{
	name: "member list", synopsis: "",
	summary: "List the members: id, name, role (leader, voter or learner), addresses, how far each log reaches.",
	details: "Any node answers, from the membership its log holds. MATCH is how far a member's log is\n" +
		"known to reach, which only the leader knows: \"-\" when another node answered. GOSSIP is how\n" +
		"gossip sees the member from the answering node (alive, dead, left; \"-\" without gossip):\n" +
		"a dead voter keeps its vote until you remove it.",
	setup: setupMemberList,
}

var memberAddCommand = command{
	name: "member add", synopsis: "NAME --peer-addr HOST:PORT [--client-addr HOST:PORT]", args: []string{"NAME"},
	summary: "Add a node as a learner and show how to start it; the leader makes it a voter once it has caught up.",
	details: "The new member is a learner: it receives the log (a snapshot first if it is far behind)\n" +
		"but does not vote. The leader promotes it to a voter by itself once it has caught up\n" +
		"('member promote' asks sooner). Then start the node with an empty data directory:\n" +
		"  keystored --name NAME --peer-addr HOST:PORT --client-addr HOST:PORT --join ENDPOINT --data-dir DIR\n" +
		"keystorectl prints that command line, joining through the endpoint that took the change.",
	setup: setupMemberAdd,
}

var memberPromoteCommand = command{
	name: "member promote", synopsis: "ID", args: []string{"ID"},
	summary: "Make a learner a voter (refused while it is behind the leader's log).",
	details: memberIDHelp + "\n" +
		"The leader refuses (exit 1, \"refused: ...\" with its reason) while the learner's log is\n" +
		"still far behind its own; wait and try again, or let the leader promote it by itself.",
	setup: setupMemberPromote,
}

var memberRemoveCommand = command{
	name: "member remove", synopsis: "ID", args: []string{"ID"},
	summary: "Remove a member (refused if the voters left could not form a quorum).",
	details: memberIDHelp + "\n" +
		"The leader refuses (exit 1, \"refused: ...\" with its reason) when the voters left could not\n" +
		"form a quorum with the members it hears from. Removing the leader hands leadership to\n" +
		"another voter first. The removed node stops serving.",
	setup: setupMemberRemove,
}

func setupMemberList(fs *flag.FlagSet) func(e *env) error {
	return func(e *env) error {
		c, err := e.dialCluster()
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := e.call(0)
		defer cancel()
		res, err := listMembers(ctx, c)
		if err != nil {
			return err
		}
		return e.out.memberList(res.GetClusterId(), res.GetMembers())
	}
}

func setupMemberAdd(fs *flag.FlagSet) func(e *env) error {
	peer := fs.String("peer-addr", "", "where the other members reach the new one, `host:port` (required)")
	clientAddr := fs.String("client-addr", "", "where clients reach the new member, `host:port`")
	return func(e *env) error {
		name := e.args[0]
		if name == "" {
			return usageErrorf("NAME must not be empty")
		}
		if *peer == "" {
			return usageErrorf("--peer-addr is required")
		}
		if err := checkHostPort(*peer); err != nil {
			return usageErrorf("--peer-addr: %v", err)
		}
		if *clientAddr != "" {
			if err := checkHostPort(*clientAddr); err != nil {
				return usageErrorf("--client-addr: %v", err)
			}
		}
		c, err := e.dialCluster()
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := e.call(0)
		defer cancel()
		in := &keystorev1.MemberAddRequest{Name: name, PeerAddress: *peer, ClientAddress: *clientAddr}
		var out *keystorev1.MemberAddResponse
		endpoint, err := c.call(ctx, func(ctx context.Context, svc keystorev1.ClusterServiceClient, retry bool) (err error) {
			if retry {
				// A lost answer: is the member there already?
				if l, lerr := svc.MemberList(ctx, &keystorev1.MemberListRequest{}); lerr == nil {
					for _, m := range l.GetMembers() {
						if m.GetName() == name && m.GetPeerAddress() == *peer {
							out = &keystorev1.MemberAddResponse{Member: m, Members: l.GetMembers(), ClusterId: l.GetClusterId()}
							return nil
						}
					}
				}
			}
			out, err = svc.MemberAdd(ctx, in)
			return err
		})
		if err != nil {
			return err
		}
		return e.out.memberAdded(out, startCommand(name, *peer, *clientAddr, endpoint))
	}
}

func setupMemberPromote(fs *flag.FlagSet) func(e *env) error {
	return func(e *env) error {
		return changeMember(e, "promoted", func(ctx context.Context, svc keystorev1.ClusterServiceClient, id string) ([]*keystorev1.Member, error) {
			res, err := svc.MemberPromote(ctx, &keystorev1.MemberPromoteRequest{Id: id})
			return res.GetMembers(), err
		}, func(m *keystorev1.Member) bool { return m != nil && !m.GetIsLearner() })
	}
}

func setupMemberRemove(fs *flag.FlagSet) func(e *env) error {
	return func(e *env) error {
		return changeMember(e, "removed", func(ctx context.Context, svc keystorev1.ClusterServiceClient, id string) ([]*keystorev1.Member, error) {
			res, err := svc.MemberRemove(ctx, &keystorev1.MemberRemoveRequest{Id: id})
			return res.GetMembers(), err
		}, func(m *keystorev1.Member) bool { return m == nil })
	}
}

// changeMember runs promote or remove (done is what it did, "promoted" or
// "removed") on the member e.args[0] names. applied tells from the member
// as a list shows it (nil: not a member) whether the change was made: a
// retry after a lost answer checks it first, since the change made twice
// would be refused (promoting a voter, removing a non-member).
func changeMember(e *env, done string,
	change func(ctx context.Context, svc keystorev1.ClusterServiceClient, id string) ([]*keystorev1.Member, error),
	applied func(m *keystorev1.Member) bool,
) error {
	arg := e.args[0]
	if arg == "" {
		return usageErrorf("ID must not be empty")
	}
	c, err := e.dialCluster()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := e.call(0)
	defer cancel()
	target, listed, err := resolveMember(ctx, c, arg)
	if err != nil {
		return err
	}
	// Only a change that was not in effect when we looked can be told
	// applied by a later look.
	checkApplied := listed && !applied(target)
	var members []*keystorev1.Member
	_, err = c.call(ctx, func(ctx context.Context, svc keystorev1.ClusterServiceClient, retry bool) (err error) {
		if retry && checkApplied {
			if l, lerr := svc.MemberList(ctx, &keystorev1.MemberListRequest{}); lerr == nil && applied(findMember(l.GetMembers(), target.GetId())) {
				members = l.GetMembers()
				return nil
			}
		}
		members, err = change(ctx, svc, target.GetId())
		return err
	})
	if err != nil {
		return err
	}
	return e.out.memberChanged(done, target, members)
}

func listMembers(ctx context.Context, c *clusterCaller) (*keystorev1.MemberListResponse, error) {
	var out *keystorev1.MemberListResponse
	_, err := c.call(ctx, func(ctx context.Context, svc keystorev1.ClusterServiceClient, _ bool) (err error) {
		out, err = svc.MemberList(ctx, &keystorev1.MemberListRequest{})
		return err
	})
	return out, err
}

// resolveMember finds the member arg names: by id (hex, an optional 0x),
// else by name; listed says it was found in the list. A hex arg that names
// no member there is returned as a bare id for the server to judge (the
// node that listed may lag behind), as it is when the list fails; a name
// must be found.
func resolveMember(ctx context.Context, c *clusterCaller, arg string) (m *keystorev1.Member, listed bool, err error) {
	id, isID := parseMemberID(arg)
	bare := &keystorev1.Member{Id: strconv.FormatUint(id, 16)}
	res, err := listMembers(ctx, c)
	if err != nil {
		if isID {
			return bare, false, nil
		}
		return nil, false, fmt.Errorf("looking up member %q: %w", arg, err)
	}
	if isID {
		if m := findMember(res.GetMembers(), bare.GetId()); m != nil {
			return m, true, nil
		}
	}
	for _, m := range res.GetMembers() {
		if m.GetName() == arg {
			return m, true, nil
		}
	}
	if isID {
		return bare, false, nil
	}
	var names []string
	for _, m := range res.GetMembers() {
		names = append(names, m.GetName()+" ("+m.GetId()+")")
	}
	return nil, false, fmt.Errorf("%w: no member has the name or id %q; the members are %s",
		client.ErrNotFound, arg, strings.Join(names, ", "))
}

// findMember returns the member of ms with id (hex), or nil.
func findMember(ms []*keystorev1.Member, id string) *keystorev1.Member {
	want, ok := parseMemberID(id)
	for _, m := range ms {
		if got, gok := parseMemberID(m.GetId()); (ok && gok && got == want) || m.GetId() == id {
			return m
		}
	}
	return nil
}

// parseMemberID reads a Raft id as hex, with or without 0x; ids are never
// zero.
func parseMemberID(s string) (uint64, bool) {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	id, err := strconv.ParseUint(s, 16, 64)
	return id, err == nil && id != 0
}

func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" || port == "" {
		return errors.New(addr + " is not host:port")
	}
	return nil
}

// startCommand is the command line that starts a member added by name with
// these addresses, joining through endpoint.
func startCommand(name, peer, clientAddr, endpoint string) string {
	if clientAddr == "" {
		clientAddr = "<host:port>"
	}
	args := []string{"keystored", "--name", name, "--peer-addr", peer, "--client-addr", clientAddr,
		"--join", endpoint, "--data-dir", "<empty dir>"}
	for i, a := range args {
		args[i] = shellQuote(a)
	}
	return strings.Join(args, " ")
}

// shellQuote quotes s for a POSIX shell unless it needs no quotes; the
// <placeholders> stay bare, to be replaced.
func shellQuote(s string) string {
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		return s
	}
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@%+=,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

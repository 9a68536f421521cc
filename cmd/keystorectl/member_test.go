package main

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/keystore-dev/keystore/internal/testcluster"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeMembership is the membership a few fakeNodes share, as the nodes of
// a cluster share their log. It refuses as the leader does: a change about
// a non-member, promoting a voter, and whatever refuse says.
type fakeMembership struct {
	mu        sync.Mutex
	clusterID string
	members   []*keystorev1.Member
	nextID    uint64
	refuse    string   // when set, every change is refused (FAILED_PRECONDITION) with this message
	calls     []string // "node: call args", in order
}

func newFakeMembership() *fakeMembership {
	return &fakeMembership{
		clusterID: "c1d2e3f4a5b6c7d8",
		nextID:    0x4a,
		members: []*keystorev1.Member{
			{Name: "n2", Id: "2b", PeerAddress: "10.0.0.2:7101", ClientAddress: "10.0.0.2:7001", MatchIndex: 118},
			{Name: "n1", Id: "8e9a1f3c2b7d4e01", PeerAddress: "10.0.0.1:7101", ClientAddress: "10.0.0.1:7001", IsLeader: true, MatchIndex: 120},
			{Name: "n3", Id: "3c", PeerAddress: "10.0.0.3:7101", IsLearner: true},
		},
	}
}

func (f *fakeMembership) find(id string) int {
	return slices.IndexFunc(f.members, func(m *keystorev1.Member) bool { return m.GetId() == id })
}

func (f *fakeMembership) list() []*keystorev1.Member {
	out := make([]*keystorev1.Member, len(f.members))
	for i, m := range f.members {
		out[i] = proto.Clone(m).(*keystorev1.Member)
	}
	return out
}

func (f *fakeMembership) callLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// fakeNode is one node's ClusterService over a fakeMembership.
type fakeNode struct {
	keystorev1.UnimplementedClusterServiceServer
	name string
	f    *fakeMembership
	// down answers every call UNAVAILABLE; loseAnswers applies a change
	// but answers UNAVAILABLE, as when the answer is lost.
	down, loseAnswers bool
}

// serve serves srv on a loopback port until the test ends and returns its
// address.
func serve(t *testing.T, srv keystorev1.ClusterServiceServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	keystorev1.RegisterClusterServiceServer(s, srv)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// begin logs a call and holds the lock; the caller must unlock.
func (n *fakeNode) begin(call string) error {
	n.f.mu.Lock()
	n.f.calls = append(n.f.calls, n.name+": "+call)
	if n.down {
		n.f.mu.Unlock()
		return status.Error(codes.Unavailable, "no leader")
	}
	return nil
}

// end answers a change: refused, lost, or out.
func (n *fakeNode) change(apply func() error) error {
	if n.f.refuse != "" {
		return status.Error(codes.FailedPrecondition, n.f.refuse)
	}
	if err := apply(); err != nil {
		return err
	}
	if n.loseAnswers {
		return status.Error(codes.Unavailable, "answer lost")
	}
	return nil
}

// refused is a refusal as the server words it: raftnode's reason, without
// raftnode's prefix.
func refused(format string, args ...any) error {
	return status.Errorf(codes.FailedPrecondition, format, args...)
}

func (n *fakeNode) MemberList(context.Context, *keystorev1.MemberListRequest) (*keystorev1.MemberListResponse, error) {
	if err := n.begin("list"); err != nil {
		return nil, err
	}
	defer n.f.mu.Unlock()
	return &keystorev1.MemberListResponse{Members: n.f.list(), ClusterId: n.f.clusterID}, nil
}

func (n *fakeNode) MemberAdd(_ context.Context, in *keystorev1.MemberAddRequest) (*keystorev1.MemberAddResponse, error) {
	if err := n.begin(fmt.Sprintf("add %s %s %s", in.GetName(), in.GetPeerAddress(), in.GetClientAddress())); err != nil {
		return nil, err
	}
	defer n.f.mu.Unlock()
	m := &keystorev1.Member{Name: in.GetName(), Id: fmt.Sprintf("%x", n.f.nextID),
		PeerAddress: in.GetPeerAddress(), ClientAddress: in.GetClientAddress(), IsLearner: true}
	err := n.change(func() error {
		if slices.ContainsFunc(n.f.members, func(o *keystorev1.Member) bool { return o.GetName() == m.GetName() }) {
			return status.Errorf(codes.FailedPrecondition, "a member named %q exists: remove it first, or choose another name", m.GetName())
		}
		n.f.nextID++
		n.f.members = append(n.f.members, m)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &keystorev1.MemberAddResponse{Member: m, Members: n.f.list(), ClusterId: n.f.clusterID}, nil
}

func (n *fakeNode) MemberPromote(_ context.Context, in *keystorev1.MemberPromoteRequest) (*keystorev1.MemberPromoteResponse, error) {
	if err := n.begin("promote " + in.GetId()); err != nil {
		return nil, err
	}
	defer n.f.mu.Unlock()
	err := n.change(func() error {
		i := n.f.find(in.GetId())
		switch {
		case i < 0:
			return refused("%s is not a member; add it as a learner first", in.GetId())
		case !n.f.members[i].GetIsLearner():
			return refused("%s is a voter already", in.GetId())
		}
		n.f.members[i].IsLearner = false
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &keystorev1.MemberPromoteResponse{Members: n.f.list()}, nil
}

func (n *fakeNode) MemberRemove(_ context.Context, in *keystorev1.MemberRemoveRequest) (*keystorev1.MemberRemoveResponse, error) {
	if err := n.begin("remove " + in.GetId()); err != nil {
		return nil, err
	}
	defer n.f.mu.Unlock()
	err := n.change(func() error {
		i := n.f.find(in.GetId())
		if i < 0 {
			return refused("%s is not a member", in.GetId())
		}
		n.f.members = slices.Delete(n.f.members, i, i+1)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &keystorev1.MemberRemoveResponse{Members: n.f.list()}, nil
}

// fakeCluster serves a fresh membership on one node and returns it with
// the --endpoints flag naming that node.
func fakeCluster(t *testing.T) (*fakeMembership, string) {
	f := newFakeMembership()
	return f, "--endpoints=" + serve(t, &fakeNode{name: "a", f: f})
}

// tableRows splits a table into its rows of columns, header first.
func tableRows(t *testing.T, table string) [][]string {
	t.Helper()
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(table, "\n"), "\n") {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

// memberTableOf returns the table a command printed after a blank line
// (add, promote, remove), up to the next blank line.
func memberTableOf(t *testing.T, out string) string {
	t.Helper()
	_, rest, ok := strings.Cut(out, "\n\n")
	if !ok {
		t.Fatalf("output:\n%s\nwant fields, a blank line, then the members", out)
	}
	table, _, _ := strings.Cut(rest, "\n\n")
	return table
}

// roles maps each member's name to its ROLE column.
func roles(t *testing.T, table string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range tableRows(t, table)[1:] {
		out[r[1]] = r[2]
	}
	return out
}

func TestMemberList(t *testing.T) {
	f, eps := fakeCluster(t)

	out := mustCLI(t, "member", "list", eps)
	t.Logf("member list:\n%s", out)
	want := [][]string{
		{"ID", "NAME", "ROLE", "PEER", "ADDR", "CLIENT", "ADDR", "MATCH", "GOSSIP"},
		{"8e9a1f3c2b7d4e01", "n1", "leader", "10.0.0.1:7101", "10.0.0.1:7001", "120", "-"},
		{"2b", "n2", "voter", "10.0.0.2:7101", "10.0.0.2:7001", "118", "-"},
		{"3c", "n3", "learner", "10.0.0.3:7101", "-", "-", "-"},
	}
	if got := tableRows(t, out); !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("member list:\n%s\ngot rows %q; want %q (sorted by name, - for unknown)", out, got, want)
	}
	if lines := strings.Split(out, "\n"); !strings.HasPrefix(lines[1], "8e9a1f3c2b7d4e01  n1    leader ") {
		t.Fatalf("member list:\n%s\nwant aligned columns", out)
	}

	obj := jsonOne(t, mustCLI(t, "member", "list", eps, "-o", "json"))
	members, _ := obj["members"].([]any)
	if obj["cluster_id"] != f.clusterID || len(members) != 3 {
		t.Fatalf("member list -o json: %v; want cluster_id %s and 3 members", obj, f.clusterID)
	}
	n3 := members[2].(map[string]any)
	if n3["name"] != "n3" || n3["id"] != "3c" || n3["is_learner"] != true || n3["is_leader"] != false ||
		n3["client_address"] != "" || n3["match_index"] != float64(0) || n3["peer_address"] != "10.0.0.3:7101" {
		t.Fatalf("member list -o json: n3 is %v; want the proto's fields", n3)
	}
}

func TestMemberAdd(t *testing.T) {
	f, eps := fakeCluster(t)
	ep := strings.TrimPrefix(eps, "--endpoints=")

	// The flags may come after NAME; the first endpoint is down, so the
	// next one is asked whether n4 is a member already, then to add it.
	down := testcluster.FreeAddr(t)
	out := mustCLI(t, "member", "add", "n4", "--endpoints", down+","+ep, "--peer-addr", "10.0.0.4:7101", "--client-addr", "10.0.0.4:7001")
	t.Logf("member add:\n%s", out)
	if got, want := f.callLog(), []string{"a: list", "a: add n4 10.0.0.4:7101 10.0.0.4:7001"}; !slices.Equal(got, want) {
		t.Fatalf("calls %q; want %q: one MemberAdd of n4 with its addresses", got, want)
	}
	head, _, _ := strings.Cut(out, "\n\n")
	fields := textFields(t, head)
	if fields["added"] != "true" || fields["name"] != "n4" || fields["id"] != "4a" || fields["role"] != "learner" ||
		fields["peer_address"] != "10.0.0.4:7101" || fields["client_address"] != "10.0.0.4:7001" || fields["cluster_id"] != f.clusterID {
		t.Fatalf("member add:\n%s\nwant the new member (id 4a, a learner) and the cluster id", out)
	}
	if r := roles(t, memberTableOf(t, out)); len(r) != 4 || r["n4"] != "learner" || r["n1"] != "leader" {
		t.Fatalf("member add:\n%s\nwant the 4 members, n4 a learner", out)
	}
	hint := "  keystored --name n4 --peer-addr 10.0.0.4:7101 --client-addr 10.0.0.4:7001 --join " + ep + " --data-dir <empty dir>\n"
	if !strings.Contains(out, hint) || !strings.Contains(out, "voter once it has caught up") {
		t.Fatalf("member add:\n%s\nwant the command that starts n4, joining through the endpoint that answered:\n%s", out, hint)
	}

	// No --client-addr: the hint leaves a placeholder. JSON carries the hint too.
	obj := jsonOne(t, mustCLI(t, "-o", "json", eps, "member", "add", "--peer-addr", "10.0.0.5:7101", "n5"))
	member, _ := obj["member"].(map[string]any)
	start := "keystored --name n5 --peer-addr 10.0.0.5:7101 --client-addr <host:port> --join " + ep + " --data-dir <empty dir>"
	if member["name"] != "n5" || member["is_learner"] != true || len(obj["members"].([]any)) != 5 ||
		obj["cluster_id"] != f.clusterID || obj["start_command"] != start {
		t.Fatalf("member add -o json: %v; want n5 a learner among 5, and start_command %q", obj, start)
	}

	wantExit1(t, `refused: a member named "n4" exists: remove it first, or choose another name`, "member", "add", "n4", eps, "--peer-addr", "10.0.0.9:7101")
}

// TestMemberAddAnswerLost: the first node applies the add but its answer is
// lost; the retry on the next node finds n4 there and does not add it again.
func TestMemberAddAnswerLost(t *testing.T) {
	f := newFakeMembership()
	eps := "--endpoints=" + serve(t, &fakeNode{name: "a", f: f, loseAnswers: true}) + "," + serve(t, &fakeNode{name: "b", f: f})
	out := mustCLI(t, "member", "add", "n4", eps, "--peer-addr", "10.0.0.4:7101")
	if got, want := f.callLog(), []string{"a: add n4 10.0.0.4:7101 ", "b: list"}; !slices.Equal(got, want) {
		t.Fatalf("calls %q; want %q", got, want)
	}
	if fields := textFields(t, strings.SplitN(out, "\n\n", 2)[0]); fields["id"] != "4a" || fields["role"] != "learner" {
		t.Fatalf("member add:\n%s\nwant n4 (4a) as the first node added it", out)
	}
}

func TestMemberPromoteRemove(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		wantCall string
		check    func(t *testing.T, out string)
	}{
		{"promote by id", []string{"member", "promote", "3c"}, "a: promote 3c", func(t *testing.T, out string) {
			if r := roles(t, memberTableOf(t, out)); r["n3"] != "voter" {
				t.Fatalf("n3 is %s after promote; want voter", r["n3"])
			}
		}},
		{"promote by 0x id", []string{"member", "promote", "0x3C"}, "a: promote 3c", nil},
		{"promote by name", []string{"member", "promote", "n3"}, "a: promote 3c", nil},
		{"remove by id", []string{"member", "remove", "2b"}, "a: remove 2b", func(t *testing.T, out string) {
			if r := roles(t, memberTableOf(t, out)); len(r) != 2 || r["n2"] != "" {
				t.Fatalf("members after remove: %v; want n1 and n3", r)
			}
		}},
		{"remove by name", []string{"member", "remove", "n1"}, "a: remove 8e9a1f3c2b7d4e01", nil},
		{"remove by long id", []string{"member", "remove", "8E9A1F3C2B7D4E01"}, "a: remove 8e9a1f3c2b7d4e01", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, eps := fakeCluster(t)
			out := mustCLI(t, append(tc.args, eps)...)
			// The name (or id) is looked up first, then the change made with
			// the id as the list spells it.
			if got, want := f.callLog(), []string{"a: list", tc.wantCall}; !slices.Equal(got, want) {
				t.Fatalf("calls %q; want %q", got, want)
			}
			fields := textFields(t, strings.SplitN(out, "\n\n", 2)[0])
			done := map[string]string{"promote": "promoted", "remove": "removed"}[tc.args[1]]
			id := strings.TrimPrefix(tc.wantCall, "a: "+tc.args[1]+" ")
			if fields[done] != "true" || fields["id"] != id || fields["name"] == "" {
				t.Fatalf("%s:\n%s\nwant %s: true, id %s and its name", strings.Join(tc.args, " "), out, done, id)
			}
			if tc.check != nil {
				tc.check(t, out)
			}
		})
	}

	t.Run("json", func(t *testing.T) {
		_, eps := fakeCluster(t)
		obj := jsonOne(t, mustCLI(t, "member", "promote", "n3", eps, "-o", "json"))
		p, _ := obj["promoted"].(map[string]any)
		if p["id"] != "3c" || p["is_learner"] != false || len(obj["members"].([]any)) != 3 {
			t.Fatalf("member promote -o json: %v; want promoted n3, now a voter, and the 3 members", obj)
		}
		obj = jsonOne(t, mustCLI(t, "member", "remove", "n2", eps, "-o", "json"))
		r, _ := obj["removed"].(map[string]any)
		if r["id"] != "2b" || r["name"] != "n2" || len(obj["members"].([]any)) != 2 {
			t.Fatalf("member remove -o json: %v; want removed n2 and the 2 members left", obj)
		}
	})

	t.Run("an id wins over a name", func(t *testing.T) {
		f, eps := fakeCluster(t)
		f.members = append(f.members, &keystorev1.Member{Name: "2b", Id: "5d", PeerAddress: "10.0.0.5:7101"})
		mustCLI(t, "member", "remove", "2b", eps)
		if got := f.callLog(); got[len(got)-1] != "a: remove 2b" {
			t.Fatalf("calls %q; want the member with id 2b removed, not the one named 2b", got)
		}
	})

	t.Run("unlisted id is sent", func(t *testing.T) {
		// The node that listed may lag: the server judges an id it did not list.
		f, eps := fakeCluster(t)
		wantExit1(t, "refused: 77 is not a member", "member", "remove", "77", eps)
		if got := f.callLog(); !slices.Equal(got, []string{"a: list", "a: remove 77"}) {
			t.Fatalf("calls %q; want a list, then the remove of 77", got)
		}
	})

	t.Run("unknown name", func(t *testing.T) {
		f, eps := fakeCluster(t)
		wantExit1(t, `not found: no member has the name or id "n9"; the members are n2 (2b), n1 (8e9a1f3c2b7d4e01), n3 (3c)`,
			"member", "promote", "n9", eps)
		if got := f.callLog(); !slices.Equal(got, []string{"a: list"}) {
			t.Fatalf("calls %q; want only the list", got)
		}
	})

	t.Run("answer lost", func(t *testing.T) {
		// The first node promotes but its answer is lost; the next one
		// lists n3 a voter and is not asked to promote it again.
		f := newFakeMembership()
		eps := "--endpoints=" + serve(t, &fakeNode{name: "a", f: f, loseAnswers: true}) + "," + serve(t, &fakeNode{name: "b", f: f})
		out := mustCLI(t, "member", "promote", "n3", eps)
		if got, want := f.callLog(), []string{"a: list", "a: promote 3c", "b: list"}; !slices.Equal(got, want) {
			t.Fatalf("calls %q; want %q", got, want)
		}
		if r := roles(t, memberTableOf(t, out)); r["n3"] != "voter" {
			t.Fatalf("member promote:\n%s\nwant n3 a voter", out)
		}
	})

	t.Run("follower down", func(t *testing.T) {
		f := newFakeMembership()
		eps := "--endpoints=" + serve(t, &fakeNode{name: "a", f: f, down: true}) + "," + serve(t, &fakeNode{name: "b", f: f})
		mustCLI(t, "member", "remove", "n2", eps)
		// Each call is tried on a, then on b; b is asked first whether n2
		// is gone, in case a removed it before it failed.
		if got, want := f.callLog(), []string{"a: list", "b: list", "a: remove 2b", "b: list", "b: remove 2b"}; !slices.Equal(got, want) {
			t.Fatalf("calls %q; want %q", got, want)
		}
	})
}

func TestMemberRefused(t *testing.T) {
	for _, tc := range []struct {
		name, msg string
		args      []string
	}{
		{"promote behind", "learner 3c is not caught up with the leader's log yet",
			[]string{"member", "promote", "n3"}},
		{"remove quorum", "2 voters would be left and the leader hears from 1, fewer than the quorum of 2",
			[]string{"member", "remove", "2b"}},
		{"add", "another change is in flight",
			[]string{"member", "add", "n4", "--peer-addr", "10.0.0.4:7101"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeMembership()
			f.refuse = tc.msg
			// Two nodes: a refusal is the cluster's answer, not tried elsewhere.
			eps := "--endpoints=" + serve(t, &fakeNode{name: "a", f: f}) + "," + serve(t, &fakeNode{name: "b", f: f})
			code, out, errOut := cli(t, append(tc.args, eps)...)
			want := "keystorectl " + strings.Join(tc.args[:2], " ") + ": refused: " + tc.msg + "\n"
			if code != exitError || out != "" || errOut != want {
				t.Fatalf("keystorectl %s: exit %d, stdout %q, stderr %q; want exit %d and stderr %q",
					strings.Join(tc.args, " "), code, out, errOut, exitError, want)
			}
			for _, c := range f.callLog() {
				if strings.HasPrefix(c, "b: ") {
					t.Fatalf("calls %q; want none on b after a refused", f.callLog())
				}
			}
		})
	}
}

// TestMemberUnsupported: a server without the membership calls.
func TestMemberUnsupported(t *testing.T) {
	eps := "--endpoints=" + serve(t, &keystorev1.UnimplementedClusterServiceServer{})
	wantExit1(t, "not supported by the server: method MemberList not implemented", "member", "list", eps)
	wantExit1(t, "not supported by the server: method MemberPromote not implemented", "member", "promote", "3c", eps)
	wantExit1(t, "not supported by the server: method MemberList not implemented", "member", "remove", "n3", eps)
}

func TestMemberUsage(t *testing.T) {
	// Nothing listens here: a usage error must be found before dialing.
	eps := "--endpoints=127.0.0.1:1"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no subcommand", []string{"member"}, "member needs a command: list, add, promote, remove"},
		{"unknown subcommand", []string{"member", "grow"}, `unknown command "member grow"`},
		{"add without name", []string{"member", "add", eps, "--peer-addr", "h:1"}, "NAME is required"},
		{"add without peer", []string{"member", "add", "n4", eps}, "--peer-addr is required"},
		{"add bad peer", []string{"member", "add", "n4", eps, "--peer-addr", "nohost"}, "--peer-addr: address nohost: missing port"},
		{"add bad client", []string{"member", "add", "n4", eps, "--peer-addr", "h:1", "--client-addr", ":7001"}, "--client-addr: :7001 is not host:port"},
		{"add two names", []string{"member", "add", "n4", "n5", eps, "--peer-addr", "h:1"}, `unexpected argument "n5"`},
		{"promote without id", []string{"member", "promote", eps}, "ID is required"},
		{"remove two ids", []string{"member", "remove", "1", "2", eps}, `unexpected argument "2"`},
		{"list with argument", []string{"member", "list", "x", eps}, `unexpected argument "x"`},
		{"remove empty id", []string{"member", "remove", "", eps}, "ID must not be empty"},
		{"help of unknown", []string{"help", "member", "grow"}, `unknown command "member grow"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := cli(t, tc.args...)
			if code != exitUsage || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "Usage: keystorectl") || out != "" {
				t.Fatalf("keystorectl %s: exit %d, stdout %q, stderr %q; want exit 2, %q and the usage on stderr",
					strings.Join(tc.args, " "), code, out, errOut, tc.want)
			}
		})
	}
}

func TestMemberHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"help"}, []string{"member list", "member add", "member promote", "member remove"}},
		{[]string{"help", "member"}, []string{"Usage: keystorectl member <command>", "member promote"}},
		{[]string{"member", "-h"}, []string{"Usage: keystorectl member <command>"}},
		{[]string{"help", "member", "add"}, []string{"member add NAME --peer-addr HOST:PORT", "learner", "--join", "-client-addr", "-endpoints"}},
		{[]string{"member", "promote", "-h"}, []string{"member promote ID", "refused", "far behind"}},
		{[]string{"help", "member", "remove"}, []string{"quorum", "hands leadership", "its name"}},
	} {
		code, out, errOut := cli(t, tc.args...)
		if code != 0 || errOut != "" {
			t.Fatalf("keystorectl %s: exit %d, stderr %q; want exit 0 and the usage on stdout", strings.Join(tc.args, " "), code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Fatalf("keystorectl %s does not mention %q:\n%s", strings.Join(tc.args, " "), w, out)
			}
		}
	}
}

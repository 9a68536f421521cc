package main

import (
	"cmp"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/keystore-dev/keystore/client"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
)

// The JSON shapes. Field names follow the proto's; times marshal as RFC 3339
// (UTC, nanoseconds), bytes as base64, as encoding/json does.

type responseJSON struct {
	Code     int32             `json:"code"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Body     []byte            `json:"body"`
}

type recordJSON struct {
	Namespace      string        `json:"namespace"`
	Key            string        `json:"key"`
	State          string        `json:"state"`
	Fingerprint    []byte        `json:"fingerprint,omitempty"`
	Token          uint64        `json:"token"`
	Attempt        uint32        `json:"attempt"`
	Owner          string        `json:"owner,omitempty"`
	CreatedAt      *time.Time    `json:"created_at,omitempty"`
	LeaseExpiresAt *time.Time    `json:"lease_expires_at,omitempty"`
	CompletedAt    *time.Time    `json:"completed_at,omitempty"`
	ExpiresAt      *time.Time    `json:"expires_at,omitempty"`
	Response       *responseJSON `json:"response,omitempty"`
}

type claimJSON struct {
	Outcome string      `json:"outcome"`
	Token   uint64      `json:"token,omitempty"`
	Record  *recordJSON `json:"record"`
}

type recordOnlyJSON struct {
	Record *recordJSON `json:"record"`
}

type releaseJSON struct {
	Namespace string `json:"namespace"`
	Key       string `json:"key"`
	Token     uint64 `json:"token"`
	Released  bool   `json:"released"`
}

type memberJSON struct {
	Name          string `json:"name"`
	ID            string `json:"id"`
	PeerAddress   string `json:"peer_address"`
	IsLeader      bool   `json:"is_leader"`
	ClientAddress string `json:"client_address"`
	IsLearner     bool   `json:"is_learner"`
	MatchIndex    uint64 `json:"match_index"`
	GossipState   string `json:"gossip_state,omitempty"`
}

type memberListJSON struct {
	ClusterID string       `json:"cluster_id"`
	Members   []memberJSON `json:"members"`
}

type memberAddJSON struct {
	Member    memberJSON   `json:"member"`
	Members   []memberJSON `json:"members"`
	ClusterID string       `json:"cluster_id"`
	// StartCommand starts the new node (its <placeholders> filled in).
	StartCommand string `json:"start_command"`
}

// memberChangeJSON is the result of promote (Promoted set) or remove.
type memberChangeJSON struct {
	Promoted *memberJSON  `json:"promoted,omitempty"`
	Removed  *memberJSON  `json:"removed,omitempty"`
	Members  []memberJSON `json:"members"`
}

type statusJSON struct {
	Endpoint      string     `json:"endpoint"`
	Name          string     `json:"name"`
	Leader        string     `json:"leader"`
	Term          uint64     `json:"term"`
	CommitIndex   uint64     `json:"commit_index"`
	AppliedIndex  uint64     `json:"applied_index"`
	LogTime       *time.Time `json:"log_time,omitempty"`
	StoredRecords uint64     `json:"stored_records"`
	Serving       bool       `json:"serving"`
	Version       string     `json:"version,omitempty"`
	// 0: not reported (a keystored from before cluster versions).
	ClusterVersion uint32       `json:"cluster_version,omitempty"`
	Members        []memberJSON `json:"members"`
}

type statusErrorJSON struct {
	Endpoint string `json:"endpoint"`
	Error    string `json:"error"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func toRecordJSON(r *client.Record) *recordJSON {
	if r == nil {
		return nil
	}
	out := &recordJSON{
		Namespace: r.Namespace, Key: r.Key, State: r.State.String(), Fingerprint: r.Fingerprint,
		Token: r.Token, Attempt: r.Attempt, Owner: r.Owner,
		CreatedAt: timePtr(r.CreatedAt), LeaseExpiresAt: timePtr(r.LeaseExpiresAt),
		CompletedAt: timePtr(r.CompletedAt), ExpiresAt: timePtr(r.ExpiresAt),
	}
	if resp := r.Response; resp != nil {
		body := resp.Body
		if body == nil {
			body = []byte{} // "" rather than null
		}
		out.Response = &responseJSON{Code: resp.Code, Metadata: resp.Metadata, Body: body}
	}
	return out
}

func toMemberJSON(m *keystorev1.Member) memberJSON {
	return memberJSON{
		Name: m.GetName(), ID: m.GetId(), PeerAddress: m.GetPeerAddress(), IsLeader: m.GetIsLeader(),
		ClientAddress: m.GetClientAddress(), IsLearner: m.GetIsLearner(), MatchIndex: m.GetMatchIndex(),
		GossipState: m.GetGossipState(),
	}
}

// toMembersJSON never returns nil: no members is [], not null.
func toMembersJSON(ms []*keystorev1.Member) []memberJSON {
	out := make([]memberJSON, 0, len(ms))
	for _, m := range ms {
		out = append(out, toMemberJSON(m))
	}
	return out
}

// printer writes results as text or as one JSON object per result.
type printer struct {
	w    io.Writer
	json bool
}

func (p *printer) encode(v any) error {
	enc := json.NewEncoder(p.w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func (p *printer) claim(res *client.ClaimResult) error {
	if p.json {
		return p.encode(claimJSON{Outcome: res.Outcome.String(), Token: res.Token, Record: toRecordJSON(res.Record)})
	}
	var f fields
	f.add("outcome", res.Outcome.String())
	if res.Record == nil && res.Token != 0 {
		f.add("token", strconv.FormatUint(res.Token, 10))
	}
	f.record(res.Record)
	return f.write(p.w)
}

func (p *printer) record(r *client.Record) error {
	if p.json {
		return p.encode(recordOnlyJSON{Record: toRecordJSON(r)})
	}
	var f fields
	f.record(r)
	return f.write(p.w)
}

func (p *printer) released(namespace, key string, token uint64) error {
	if p.json {
		return p.encode(releaseJSON{Namespace: namespace, Key: key, Token: token, Released: true})
	}
	var f fields
	f.add("released", "true")
	f.add("namespace", namespace)
	f.add("key", key)
	f.add("token", strconv.FormatUint(token, 10))
	return f.write(p.w)
}

// status writes one row (or JSON object) per endpoint.
func (p *printer) status(nodes []client.NodeStatus) error {
	if p.json {
		for _, n := range nodes {
			var v any
			if n.Err != nil || n.Status == nil {
				v = statusErrorJSON{Endpoint: n.Endpoint, Error: describe(n.Err)}
			} else {
				st := n.Status
				sj := statusJSON{
					Endpoint: n.Endpoint, Name: st.GetName(), Leader: st.GetLeader(), Term: st.GetTerm(),
					CommitIndex: st.GetCommitIndex(), AppliedIndex: st.GetAppliedIndex(),
					StoredRecords: st.GetStoredRecords(), Serving: st.GetServing(), Version: st.GetVersion(),
					ClusterVersion: st.GetClusterVersion(),
				}
				if lt := st.GetLogTime(); lt != nil {
					sj.LogTime = timePtr(lt.AsTime())
				}
				sj.Members = toMembersJSON(st.GetMembers())
				v = sj
			}
			if err := p.encode(v); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tNAME\tLEADER\tTERM\tCOMMIT\tAPPLIED\tRECORDS\tSERVING\tCLUSTER-VERSION")
	for _, n := range nodes {
		if n.Err != nil || n.Status == nil {
			fmt.Fprintf(tw, "%s\terror: %s\n", n.Endpoint, describe(n.Err))
			continue
		}
		st := n.Status
		leader := st.GetLeader()
		if leader == "" {
			leader = "-"
		}
		cv := "-" // a keystored from before cluster versions (docs/upgrade.md)
		if v := st.GetClusterVersion(); v > 0 {
			cv = fmt.Sprint(v)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%t\t%s\n", n.Endpoint, st.GetName(), leader,
			st.GetTerm(), st.GetCommitIndex(), st.GetAppliedIndex(), st.GetStoredRecords(), st.GetServing(), cv)
	}
	return tw.Flush()
}

func (p *printer) memberList(clusterID string, ms []*keystorev1.Member) error {
	if p.json {
		return p.encode(memberListJSON{ClusterID: clusterID, Members: toMembersJSON(ms)})
	}
	return memberTable(p.w, ms)
}

// memberAdded shows the new member, the members, and how to start it.
func (p *printer) memberAdded(res *keystorev1.MemberAddResponse, start string) error {
	if p.json {
		return p.encode(memberAddJSON{
			Member: toMemberJSON(res.GetMember()), Members: toMembersJSON(res.GetMembers()),
			ClusterID: res.GetClusterId(), StartCommand: start,
		})
	}
	m := res.GetMember()
	var f fields
	f.add("added", "true")
	f.member(m)
	if id := res.GetClusterId(); id != "" {
		f.add("cluster_id", id)
	}
	if err := f.write(p.w); err != nil {
		return err
	}
	if _, err := io.WriteString(p.w, "\n"); err != nil {
		return err
	}
	if err := memberTable(p.w, res.GetMembers()); err != nil {
		return err
	}
	_, err := fmt.Fprintf(p.w, "\nStart %s with an empty data directory:\n  %s\n"+
		"The leader makes it a voter once it has caught up ('keystorectl member list' shows its role).\n",
		m.GetName(), start)
	return err
}

// memberChanged shows the member promoted or removed (done says which)
// and the members after the change.
func (p *printer) memberChanged(done string, m *keystorev1.Member, members []*keystorev1.Member) error {
	if p.json {
		v := memberChangeJSON{Members: toMembersJSON(members)}
		mj := toMemberJSON(m)
		if done == "removed" {
			v.Removed = &mj
		} else {
			// What it is now, as the answer lists it.
			if now := findMember(members, m.GetId()); now != nil {
				mj = toMemberJSON(now)
			}
			v.Promoted = &mj
		}
		return p.encode(v)
	}
	var f fields
	f.add(done, "true")
	f.add("id", m.GetId())
	if m.GetName() != "" {
		f.add("name", m.GetName())
	}
	if err := f.write(p.w); err != nil {
		return err
	}
	if _, err := io.WriteString(p.w, "\n"); err != nil {
		return err
	}
	return memberTable(p.w, members)
}

// memberTable writes the members sorted by name, one row each.
func memberTable(w io.Writer, ms []*keystorev1.Member) error {
	ms = slices.Clone(ms)
	slices.SortStableFunc(ms, func(a, b *keystorev1.Member) int {
		return cmp.Or(cmp.Compare(a.GetName(), b.GetName()), cmp.Compare(a.GetId(), b.GetId()))
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tROLE\tPEER ADDR\tCLIENT ADDR\tMATCH\tGOSSIP")
	for _, m := range ms {
		match := "-"
		if m.GetMatchIndex() != 0 {
			match = strconv.FormatUint(m.GetMatchIndex(), 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dash(m.GetId()), dash(m.GetName()), memberRole(m),
			dash(m.GetPeerAddress()), dash(m.GetClientAddress()), match, dash(m.GetGossipState()))
	}
	return tw.Flush()
}

func memberRole(m *keystorev1.Member) string {
	switch {
	case m.GetIsLeader():
		return "leader"
	case m.GetIsLearner():
		return "learner"
	}
	return "voter"
}

// dash stands in for an empty column.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// fields are "key: value" lines written with the values aligned.
type fields struct{ kv [][2]string }

func (f *fields) add(k, v string) { f.kv = append(f.kv, [2]string{k, v}) }

func (f *fields) addTime(k string, t time.Time) {
	if !t.IsZero() {
		f.add(k, t.UTC().Format(time.RFC3339Nano))
	}
}

func (f *fields) record(r *client.Record) {
	if r == nil {
		return
	}
	f.add("namespace", r.Namespace)
	f.add("key", r.Key)
	f.add("state", r.State.String())
	f.add("token", strconv.FormatUint(r.Token, 10))
	f.add("attempt", strconv.FormatUint(uint64(r.Attempt), 10))
	if r.Owner != "" {
		f.add("owner", r.Owner)
	}
	if len(r.Fingerprint) > 0 {
		f.add("fingerprint", fingerprintText(r.Fingerprint))
	}
	f.addTime("created_at", r.CreatedAt)
	f.addTime("lease_expires_at", r.LeaseExpiresAt)
	f.addTime("completed_at", r.CompletedAt)
	f.addTime("expires_at", r.ExpiresAt)
	if resp := r.Response; resp != nil {
		f.add("response.code", strconv.FormatInt(int64(resp.Code), 10))
		keys := make([]string, 0, len(resp.Metadata))
		for k := range resp.Metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			f.add("response.header", k+": "+resp.Metadata[k])
		}
		f.add("response.body", bodyText(resp.Body))
	}
}

func (f *fields) member(m *keystorev1.Member) {
	f.add("name", m.GetName())
	f.add("id", m.GetId())
	f.add("role", memberRole(m))
	f.add("peer_address", m.GetPeerAddress())
	f.add("client_address", dash(m.GetClientAddress()))
}

func (f *fields) write(w io.Writer) error {
	width := 0
	for _, kv := range f.kv {
		width = max(width, len(kv[0]))
	}
	var b strings.Builder
	for _, kv := range f.kv {
		fmt.Fprintf(&b, "%-*s %s\n", width+1, kv[0]+":", kv[1])
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// fingerprintText shows a fingerprint as its text when it is printable
// (what --fingerprint sends), else as hex (what --fingerprint-hex takes).
func fingerprintText(b []byte) string {
	if printable(b) {
		return fmt.Sprintf("%q (hex %s)", b, hex.EncodeToString(b))
	}
	return "hex " + hex.EncodeToString(b)
}

// bodyText shows a body as is when it is one line of printable text, else
// Go-quoted (invalid UTF-8 as \x escapes).
func bodyText(b []byte) string {
	if len(b) > 0 && printable(b) {
		return string(b)
	}
	return strconv.Quote(string(b))
}

func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

type versionJSON struct {
	Client  string              `json:"client"`
	Servers []serverVersionJSON `json:"servers"`
}

type serverVersionJSON struct {
	Endpoint string `json:"endpoint"`
	Version  string `json:"version,omitempty"`
	Error    string `json:"error,omitempty"`
}

// versions writes keystorectl's version and each endpoint's.
func (p *printer) versions(client string, nodes []client.NodeStatus) error {
	out := versionJSON{Client: client}
	for _, n := range nodes {
		v := serverVersionJSON{Endpoint: n.Endpoint}
		switch {
		case n.Err != nil || n.Status == nil:
			v.Error = describe(n.Err)
		case n.Status.GetVersion() == "":
			v.Version = "(older than this field)"
		default:
			v.Version = n.Status.GetVersion()
		}
		out.Servers = append(out.Servers, v)
	}
	if p.json {
		return p.encode(out)
	}
	fmt.Fprintf(p.w, "keystorectl: %s\n", out.Client)
	for _, v := range out.Servers {
		if v.Error != "" {
			fmt.Fprintf(p.w, "%s: error: %s\n", v.Endpoint, v.Error)
			continue
		}
		fmt.Fprintf(p.w, "%s: %s\n", v.Endpoint, v.Version)
	}
	return nil
}

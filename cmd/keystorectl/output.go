package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/keystore-dev/keystore/client"
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
	Name        string `json:"name"`
	ID          string `json:"id"`
	PeerAddress string `json:"peer_address"`
	IsLeader    bool   `json:"is_leader"`
}

type statusJSON struct {
	Endpoint      string       `json:"endpoint"`
	Name          string       `json:"name"`
	Leader        string       `json:"leader"`
	Term          uint64       `json:"term"`
	CommitIndex   uint64       `json:"commit_index"`
	AppliedIndex  uint64       `json:"applied_index"`
	LogTime       *time.Time   `json:"log_time,omitempty"`
	StoredRecords uint64       `json:"stored_records"`
	Serving       bool         `json:"serving"`
	Members       []memberJSON `json:"members"`
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
					StoredRecords: st.GetStoredRecords(), Serving: st.GetServing(),
					Members: []memberJSON{},
				}
				if lt := st.GetLogTime(); lt != nil {
					sj.LogTime = timePtr(lt.AsTime())
				}
				for _, m := range st.GetMembers() {
					sj.Members = append(sj.Members, memberJSON{Name: m.GetName(), ID: m.GetId(), PeerAddress: m.GetPeerAddress(), IsLeader: m.GetIsLeader()})
				}
				v = sj
			}
			if err := p.encode(v); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tNAME\tLEADER\tTERM\tCOMMIT\tAPPLIED\tRECORDS\tSERVING")
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%t\n", n.Endpoint, st.GetName(), leader,
			st.GetTerm(), st.GetCommitIndex(), st.GetAppliedIndex(), st.GetStoredRecords(), st.GetServing())
	}
	return tw.Flush()
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

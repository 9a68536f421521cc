package harness

import (
	"context"
	"fmt"
	"math/rand"
	"sync"
	"time"

	"github.com/keystore-dev/keystore/cluster-test/history"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Workload configures the clients of a run.
type Workload struct {
	Namespace string
	// Pinned clients talk to one node each; Roaming ones pick a node per
	// call (a client failing over).
	Pinned, Roaming int
	// HotKeys are shared by every client; ColdKeys spread the load.
	HotKeys, ColdKeys int
	// Lease and Retention of every claim. Short values make takeovers and
	// expiry happen during faults.
	Lease, Retention time.Duration
	// OpTimeout bounds each call; a call that times out is indeterminate.
	OpTimeout time.Duration
	// PausedHolder is the chance that a client which acquired a key sleeps
	// past its lease before completing it.
	PausedHolder float64
	Seed         int64
}

func (w Workload) withDefaults() Workload {
	if w.Namespace == "" {
		w.Namespace = "faults"
	}
	if w.Pinned == 0 && w.Roaming == 0 {
		w.Pinned, w.Roaming = 9, 3
	}
	if w.HotKeys == 0 {
		w.HotKeys = 4
	}
	if w.ColdKeys == 0 {
		w.ColdKeys = 60
	}
	if w.Lease == 0 {
		w.Lease = 2 * time.Second
	}
	if w.Retention == 0 {
		w.Retention = 6 * time.Second
	}
	if w.OpTimeout == 0 {
		w.OpTimeout = 2 * time.Second
	}
	if w.PausedHolder == 0 {
		w.PausedHolder = 0.05
	}
	return w
}

// RunWorkload runs the clients until ctx ends, recording every call in log.
func RunWorkload(ctx context.Context, c *Cluster, w Workload, log *history.Log) {
	w = w.withDefaults()
	var wg sync.WaitGroup
	for i := 0; i < w.Pinned+w.Roaming; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			cl := &workClient{id: id, c: c, w: w, log: log, rng: rand.New(rand.NewSource(w.Seed*1000 + int64(id))), held: map[string]uint64{}}
			if id < w.Pinned {
				cl.pinned = c.Names[id%len(c.Names)]
			}
			cl.batched = id%3 == 2
			if id%3 == 1 {
				cl.streams = map[string]*kvStream{}
			}
			cl.run(ctx)
			for _, s := range cl.streams {
				s.close()
			}
		}(i)
	}
	wg.Wait()
}

type workClient struct {
	id     int
	c      *Cluster
	w      Workload
	log    *history.Log
	rng    *rand.Rand
	pinned string
	held   map[string]uint64 // keys this client holds a claim on → token
	// batched clients send their writes through BatchService.Batch,
	// streaming ones (streams not nil) through a BatchService.Stream per
	// node.
	batched bool
	streams map[string]*kvStream
	seq     int
}

func (cl *workClient) node() string {
	if cl.pinned != "" {
		return cl.pinned
	}
	return cl.c.Names[cl.rng.Intn(len(cl.c.Names))]
}

func (cl *workClient) key() string {
	if cl.rng.Float64() < 0.7 {
		return fmt.Sprintf("hot-%d", cl.rng.Intn(cl.w.HotKeys))
	}
	return fmt.Sprintf("cold-%d", cl.rng.Intn(cl.w.ColdKeys))
}

// fingerprint is the key's request fingerprint; now and then a client
// reuses a key for a different request.
func (cl *workClient) fingerprint(key string) []byte {
	if cl.rng.Float64() < 0.03 {
		return []byte("other-" + key)
	}
	return []byte("fp-" + key)
}

func (cl *workClient) heldKey() (string, uint64, bool) {
	for k, t := range cl.held {
		return k, t, true
	}
	return "", 0, false
}

func (cl *workClient) run(ctx context.Context) {
	for ctx.Err() == nil {
		r := cl.rng.Float64()
		k, tok, holding := cl.heldKey()
		switch {
		case holding && r < 0.30:
			cl.complete(ctx, k, tok)
		case holding && r < 0.38:
			cl.heartbeat(ctx, k, tok)
		case holding && r < 0.42:
			cl.release(ctx, k, tok)
		case r < 0.75:
			cl.claim(ctx, cl.key())
		default:
			cl.get(ctx, cl.key(), cl.rng.Float64() < 0.15)
		}
		// A little think time keeps the load realistic on two cores.
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(cl.rng.Intn(20)) * time.Millisecond):
		}
	}
}

func (cl *workClient) call(ctx context.Context, op history.Op, fn func(ctx context.Context, kv keystorev1.KeyStoreServiceClient) (*keystorev1.Record, string, error)) history.Op {
	node := cl.node()
	op.Client, op.Node = cl.id, node
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cl.w.OpTimeout)
	op.Call = time.Now().UnixNano()
	kv := cl.c.KV(node)
	switch {
	case cl.batched:
		kv = opKV{kv, batchKV{bs: cl.c.Batch(node), filler: cl.w.Namespace + "-filler"}.do}
	case cl.streams != nil:
		s := cl.streams[node]
		if s == nil {
			s = &kvStream{bs: cl.c.Batch(node)}
			cl.streams[node] = s
		}
		kv = opKV{kv, s.do}
	}
	rec, outcome, err := fn(actx, kv)
	op.Return = time.Now().UnixNano()
	cancel()
	op.Result, op.Error = classify(err)
	op.Outcome = outcome
	op.Record = toHistory(rec)
	op.ID = cl.log.Add(op)
	return op
}

func (cl *workClient) claim(ctx context.Context, key string) {
	fp := cl.fingerprint(key)
	op := cl.call(ctx, history.Op{Kind: history.Claim, Key: key, Fingerprint: fp, Lease: cl.w.Lease, Retention: cl.w.Retention},
		func(ctx context.Context, kv keystorev1.KeyStoreServiceClient) (*keystorev1.Record, string, error) {
			resp, err := kv.Claim(ctx, &keystorev1.ClaimRequest{
				Namespace: cl.w.Namespace, Key: key, Fingerprint: fp,
				Lease: durationpb.New(cl.w.Lease), Retention: durationpb.New(cl.w.Retention),
				Owner: fmt.Sprintf("client-%d", cl.id),
			})
			if err != nil {
				return nil, "", err
			}
			return resp.GetRecord(), outcomeName(resp.GetOutcome()), nil
		})
	if op.Result == history.OK && op.Outcome == "ACQUIRED" {
		cl.held[key] = op.Record.Token
		if cl.rng.Float64() < cl.w.PausedHolder {
			// A paused holder: it completes long after its lease ended.
			select {
			case <-ctx.Done():
			case <-time.After(cl.w.Lease + time.Duration(cl.rng.Intn(1000))*time.Millisecond):
			}
			cl.complete(ctx, key, op.Record.Token)
		}
	}
}

func (cl *workClient) complete(ctx context.Context, key string, token uint64) {
	cl.seq++
	body := []byte(fmt.Sprintf("c%d-%d", cl.id, cl.seq))
	cl.call(ctx, history.Op{Kind: history.Complete, Key: key, Token: token, ResponseCode: 200, ResponseBody: body},
		func(ctx context.Context, kv keystorev1.KeyStoreServiceClient) (*keystorev1.Record, string, error) {
			resp, err := kv.Complete(ctx, &keystorev1.CompleteRequest{
				Namespace: cl.w.Namespace, Key: key, Token: token,
				Response: &keystorev1.Response{Code: 200, Body: body},
			})
			return resp.GetRecord(), "", err
		})
	delete(cl.held, key)
}

func (cl *workClient) heartbeat(ctx context.Context, key string, token uint64) {
	op := cl.call(ctx, history.Op{Kind: history.Heartbeat, Key: key, Token: token, Lease: cl.w.Lease},
		func(ctx context.Context, kv keystorev1.KeyStoreServiceClient) (*keystorev1.Record, string, error) {
			resp, err := kv.Heartbeat(ctx, &keystorev1.HeartbeatRequest{
				Namespace: cl.w.Namespace, Key: key, Token: token, Lease: durationpb.New(cl.w.Lease),
			})
			return resp.GetRecord(), "", err
		})
	if op.Result != history.OK && op.Result != history.Indeterminate {
		delete(cl.held, key)
	}
}

func (cl *workClient) release(ctx context.Context, key string, token uint64) {
	cl.call(ctx, history.Op{Kind: history.Release, Key: key, Token: token},
		func(ctx context.Context, kv keystorev1.KeyStoreServiceClient) (*keystorev1.Record, string, error) {
			_, err := kv.Release(ctx, &keystorev1.ReleaseRequest{Namespace: cl.w.Namespace, Key: key, Token: token})
			return nil, "", err
		})
	delete(cl.held, key)
}

func (cl *workClient) get(ctx context.Context, key string, stale bool) {
	cons := keystorev1.Consistency_CONSISTENCY_LINEARIZABLE
	if stale {
		cons = keystorev1.Consistency_CONSISTENCY_STALE
	}
	cl.call(ctx, history.Op{Kind: history.Get, Key: key, Stale: stale},
		func(ctx context.Context, kv keystorev1.KeyStoreServiceClient) (*keystorev1.Record, string, error) {
			resp, err := kv.Get(ctx, &keystorev1.GetRequest{Namespace: cl.w.Namespace, Key: key, Consistency: cons})
			return resp.GetRecord(), "", err
		})
}

// classify maps a call's error to a history result.
func classify(err error) (result, text string) {
	if err == nil {
		return history.OK, ""
	}
	st := status.Convert(err)
	reason := ""
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			reason = info.GetReason()
		}
	}
	switch {
	case reason == history.ClaimLost, reason == history.FingerprintMismatch, reason == history.AlreadyCompleted:
		return reason, st.Message()
	case st.Code() == codes.NotFound:
		return history.NotFound, st.Message()
	}
	// Timeouts, UNAVAILABLE and anything unexpected: the call may or may
	// not have taken effect.
	return history.Indeterminate, st.Code().String() + ": " + st.Message()
}

func outcomeName(o keystorev1.ClaimOutcome) string {
	switch o {
	case keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED:
		return "ACQUIRED"
	case keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS:
		return "IN_PROGRESS"
	case keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED:
		return "COMPLETED"
	}
	return ""
}

func toHistory(r *keystorev1.Record) *history.Record {
	if r == nil {
		return nil
	}
	out := &history.Record{
		Fingerprint:    r.GetFingerprint(),
		Token:          r.GetToken(),
		Attempt:        r.GetAttempt(),
		Owner:          r.GetOwner(),
		CreatedAt:      r.GetCreatedAt().AsTime().UnixNano(),
		LeaseExpiresAt: r.GetLeaseExpiresAt().AsTime().UnixNano(),
		ExpiresAt:      r.GetExpiresAt().AsTime().UnixNano(),
	}
	if r.GetCompletedAt() != nil {
		out.CompletedAt = r.GetCompletedAt().AsTime().UnixNano()
	}
	switch r.GetState() {
	case keystorev1.RecordState_RECORD_STATE_IN_PROGRESS:
		out.State = "IN_PROGRESS"
	case keystorev1.RecordState_RECORD_STATE_COMPLETED:
		out.State = "COMPLETED"
	}
	if resp := r.GetResponse(); resp != nil {
		out.ResponseCode, out.ResponseBody = resp.GetCode(), resp.GetBody()
	}
	return out
}

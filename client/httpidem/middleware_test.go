package httpidem_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/client/httpidem"
	"github.com/keystore-dev/keystore/internal/testcluster"
	"google.golang.org/grpc"
)

const ns = "httpidem-test"

// result is an HTTP response, read whole.
type result struct {
	status int
	header http.Header
	body   string
}

func (r result) replayed() bool { return r.header.Get(httpidem.ReplayedHeader) == "true" }

// env is one cluster and a client of it, shared by the subtests of
// TestMiddleware (starting a cluster takes a second or two).
type env struct {
	tc *testcluster.Cluster
	c  *client.Client
}

func newClient(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	c, err := client.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// serve starts an HTTP server of handler behind the middleware.
func (e *env) serve(t *testing.T, handler http.Handler, opts ...httpidem.Option) string {
	t.Helper()
	return serveWith(t, e.c, handler, opts...)
}

func serveWith(t *testing.T, c *client.Client, handler http.Handler, opts ...httpidem.Option) string {
	t.Helper()
	mw := httpidem.Middleware(c, append([]httpidem.Option{httpidem.WithNamespace(ns)}, opts...)...)
	srv := httptest.NewServer(mw(handler))
	t.Cleanup(srv.Close)
	return srv.URL
}

var httpClient = &http.Client{Timeout: 20 * time.Second}

// do sends a request; key "" sends no Idempotency-Key header. hdr are
// more header name, value pairs.
func do(t *testing.T, method, url, key, body string, hdr ...string) result {
	t.Helper()
	r, err := send(method, url, key, body, hdr...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// send is do for goroutines other than the test's.
func send(method, url, key, body string, hdr ...string) (result, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return result{}, err
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{}, err
	}
	return result{status: resp.StatusCode, header: resp.Header, body: string(b)}, nil
}

// checkProblem fails unless r is RFC 9457 problem details of this status
// and type.
func checkProblem(t *testing.T, r result, status int, typ string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status: got %d; want %d (body %s)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type: got %q; want application/problem+json", ct)
	}
	var p struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("problem body %q: %v", r.body, err)
	}
	if p.Type != typ || p.Status != status || p.Title == "" || p.Detail == "" {
		t.Fatalf("problem: got %+v; want type %s, status %d, a title and a detail", p, typ, status)
	}
	if strings.Contains(p.Detail, "keystore:") || strings.Contains(p.Detail, "rpc error") {
		t.Fatalf("problem detail leaks internal error text: %q", p.Detail)
	}
}

// counting returns a handler that counts its runs and answers status with
// body "run N".
func counting(runs *atomic.Int32, status int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := runs.Add(1)
		w.WriteHeader(status)
		fmt.Fprintf(w, "run %d", n)
	})
}

func TestMiddleware(t *testing.T) {
	tc := testcluster.Start(t, testcluster.Options{})
	e := &env{tc: tc, c: newClient(t, client.Config{Endpoints: tc.Endpoints()})}
	tests := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"MissingKey400", testMissingKey},
		{"InvalidKey400", testInvalidKey},
		{"QuotedKeyIsTheBareKey", testQuotedKey},
		{"BodyTooLarge413", testBodyTooLarge},
		{"InProgress409WithRetryAfter", testInProgress},
		{"WaitThenReplay", testWaitThenReplay},
		{"WaitThenTakeOver", testWaitThenTakeOver},
		{"WaitedLongHoldsItsClaim", testWaitedLongHoldsItsClaim},
		{"KeyReused422", testKeyReused},
		{"ReplayStatusHeadersBody", testReplay},
		{"ConcurrentRequestsRunOnce", testConcurrent},
		{"TransientStatusReleases", testTransientReleases},
		{"ClientErrorIsStored", testClientErrorStored},
		{"ImplicitStatusAndFlush", testImplicitStatus},
		{"OtherMethodsPassThrough", testPassThrough},
		{"KeyNotRequired", testKeyNotRequired},
		{"BodyRestoredForHandler", testBodyRestored},
		{"ClaimLost409", testClaimLost},
		{"PanicReleases", testPanicReleases},
		{"KeyScopeSeparatesCallers", testKeyScope},
		{"ScopeByAuthorization", testScopeAuthorization},
		{"ScopeByClientCert", testScopeClientCert},
		{"AnonymousScopeIsShared", testAnonymousScope},
		{"RequireScope401", testRequireScope},
		{"WithScopeOverrides", testWithScope},
		{"WithoutScopeSharesKeys", testWithoutScope},
		{"KeyLimitIsMaxKeyLen", testKeyLimit},
		{"Unavailable503", testUnavailable},
		{"OversizeResponseNotStored", testOversizeResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, e)
		})
	}
}

func testMissingKey(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated))
	checkProblem(t, do(t, "POST", url+"/orders", "", `{}`), http.StatusBadRequest, httpidem.ProblemKeyMissing)
	checkProblem(t, do(t, "PATCH", url+"/orders/1", "", `{}`), http.StatusBadRequest, httpidem.ProblemKeyMissing)
	if n := runs.Load(); n != 0 {
		t.Fatalf("handler ran %d times; want 0", n)
	}
}

func testInvalidKey(t *testing.T, e *env) {
	var runs atomic.Int32
	h := httpidem.Middleware(e.c, httpidem.WithNamespace(ns))(counting(&runs, http.StatusCreated))
	for _, tc := range []struct {
		name   string
		values []string
	}{
		{"TooLong", []string{strings.Repeat("k", 256)}},
		{"Empty", []string{""}},
		{"Tab", []string{"a\tb"}},
		{"NotUTF8", []string{"a\xffb"}},
		{"Twice", []string{"a", "b"}},
		{"UnterminatedString", []string{`"abc`}},
		{"StringWithParameters", []string{`"abc";p=1`}},
		{"QuotedEmpty", []string{`""`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("POST", "/orders", strings.NewReader(`{}`))
			req.Header["Idempotency-Key"] = tc.values
			rw := httptest.NewRecorder()
			h.ServeHTTP(rw, req)
			checkProblem(t, result{rw.Code, rw.Header(), rw.Body.String()}, http.StatusBadRequest, httpidem.ProblemKeyInvalid)
		})
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("handler ran %d times; want 0", n)
	}
	// MaxKeyLen (232) bytes is the longest key.
	url := e.serve(t, counting(&runs, http.StatusCreated))
	if r := do(t, "POST", url, strings.Repeat("k", httpidem.MaxKeyLen), ""); r.status != http.StatusCreated {
		t.Fatalf("%d-byte key: got %d %s; want 201", httpidem.MaxKeyLen, r.status, r.body)
	}
}

func testQuotedKey(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated))
	first := do(t, "POST", url, `"quoted-\"key\""`, "x")
	again := do(t, "POST", url, `quoted-"key"`, "x")
	if first.status != http.StatusCreated || !again.replayed() || again.body != first.body {
		t.Fatalf("bare key after the same key quoted: got %d %q (replayed %v); want the replay of %q",
			again.status, again.body, again.replayed(), first.body)
	}
}

func testBodyTooLarge(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated), httpidem.WithMaxBodyBytes(16))
	checkProblem(t, do(t, "POST", url, t.Name(), strings.Repeat("x", 17)), http.StatusRequestEntityTooLarge, httpidem.ProblemBodyTooLarge)
	// Without a Content-Length, the body is read to the limit.
	req, _ := http.NewRequest("POST", url, io.MultiReader(strings.NewReader(strings.Repeat("y", 100))))
	req.ContentLength = -1
	req.Header.Set("Idempotency-Key", t.Name()+"-chunked")
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	checkProblem(t, result{resp.StatusCode, resp.Header, string(b)}, http.StatusRequestEntityTooLarge, httpidem.ProblemBodyTooLarge)
	if r := do(t, "POST", url, t.Name()+"-ok", strings.Repeat("x", 16)); r.status != http.StatusCreated {
		t.Fatalf("16-byte body: got %d; want 201", r.status)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

func testInProgress(t *testing.T, e *env) {
	key := t.Name()
	if _, err := e.c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: ns, Key: anonymousKey(key), Lease: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated))
	r := do(t, "POST", url, key, "{}")
	checkProblem(t, r, http.StatusConflict, httpidem.ProblemInProgress)
	ra, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 10 {
		t.Fatalf("Retry-After: got %q; want whole seconds in [1, 10]", r.header.Get("Retry-After"))
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("handler ran %d times; want 0", n)
	}
}

func testWaitThenReplay(t *testing.T, e *env) {
	key := t.Name()
	claim, err := e.c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: ns, Key: anonymousKey(key), Lease: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, err := e.c.Complete(context.Background(), client.CompleteRequest{Namespace: ns, Key: anonymousKey(key), Token: claim.Token,
			Response: client.Response{Code: 202, Metadata: map[string]string{"X-Done": "elsewhere"}, Body: []byte("accepted")}})
		if err != nil {
			t.Error(err)
		}
	}()
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated), httpidem.WithWait(5*time.Second))
	r := do(t, "POST", url, key, "{}")
	if r.status != 202 || r.body != "accepted" || r.header.Get("X-Done") != "elsewhere" || !r.replayed() {
		t.Fatalf("request waiting for the holder: got %d %q %v; want the holder's 202 replayed", r.status, r.body, r.header)
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("handler ran %d times; want 0", n)
	}
}

// A request that waits longer than its own lease for a holder that never
// finishes takes the key over and keeps it while the handler runs.
func testWaitThenTakeOver(t *testing.T, e *env) {
	key := t.Name()
	if _, err := e.c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: ns, Key: anonymousKey(key), Lease: 700 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	url := e.serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		select {
		case <-time.After(600 * time.Millisecond):
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusCreated)
	}), httpidem.WithWait(5*time.Second), httpidem.WithLease(300*time.Millisecond))
	if r := do(t, "POST", url, key, "{}"); r.status != http.StatusCreated || r.replayed() {
		t.Fatalf("request outwaiting a dead holder: got %d %q; want the handler's 201", r.status, r.body)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

// testWaitedLongHoldsItsClaim: a request that waited longer than its
// lease for another holder holds its claim from the grant, not from when
// it sent its Claim. Its first heartbeat fails and is tried again while
// the lease runs; the handler, running longer than the lease, gets its
// response stored. Counting from the send, as the middleware did before
// client.Hold, the lease had ended by the time the key was granted, so
// that one failed heartbeat gave the claim up at once: the handler's
// context was cancelled and the request answered 409 ProblemClaimLost,
// with nothing stored.
func testWaitedLongHoldsItsClaim(t *testing.T, e *env) {
	const lease = 900 * time.Millisecond
	key := t.Name()
	held, err := e.c.Claim(ctxT(t, 5*time.Second), client.ClaimRequest{Namespace: ns, Key: anonymousKey(key), Lease: 2 * time.Second})
	if err != nil || held.Outcome != client.Acquired {
		t.Fatalf("first holder's claim: %+v, %v; want Acquired", held, err)
	}
	go func() {
		// The holder keeps the key past the request's lease, then gives
		// it up.
		time.Sleep(700 * time.Millisecond)
		_, _ = e.c.Heartbeat(context.Background(), ns, anonymousKey(key), held.Token, 2*time.Second)
		time.Sleep(700 * time.Millisecond)
		_ = e.c.Release(context.Background(), ns, anonymousKey(key), held.Token)
	}()
	refuser := testcluster.NewHeartbeatRefuser(1)
	c := newClient(t, client.Config{
		Endpoints:   e.tc.Endpoints(),
		MaxInflight: -1,
		DialOptions: []grpc.DialOption{refuser.DialOption()},
	})
	var runs atomic.Int32
	began := make(chan time.Time, 1)
	url := serveWith(t, c, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		began <- time.Now()
		select {
		case <-time.After(lease + 400*time.Millisecond): // longer than the lease
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "created")
	}), httpidem.WithLease(lease), httpidem.WithWait(5*time.Second))
	sent := time.Now()
	r := do(t, "POST", url, key, "{}")
	if r.status != http.StatusCreated || r.body != "created" || r.replayed() {
		t.Fatalf("request that waited for the key: got %d %q; want the handler's 201 stored", r.status, r.body)
	}
	if waited := (<-began).Sub(sent); waited < lease {
		t.Fatalf("the handler began %s after the request; want the request to wait longer than its %s lease", waited, lease)
	}
	if n := refuser.Refused(); n != 1 {
		t.Fatalf("%d heartbeats refused; want 1", n)
	}
	if again := do(t, "POST", url, key, "{}"); again.status != http.StatusCreated || again.body != "created" || !again.replayed() {
		t.Fatalf("retry: got %d %q (replayed %v); want the stored 201 replayed", again.status, again.body, again.replayed())
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

func testKeyReused(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated))
	key := t.Name()
	if r := do(t, "POST", url+"/orders", key, `{"amount":10}`); r.status != http.StatusCreated {
		t.Fatalf("first request: got %d; want 201", r.status)
	}
	checkProblem(t, do(t, "POST", url+"/orders", key, `{"amount":99}`), http.StatusUnprocessableEntity, httpidem.ProblemKeyReused)
	checkProblem(t, do(t, "POST", url+"/refunds", key, `{"amount":10}`), http.StatusUnprocessableEntity, httpidem.ProblemKeyReused)
	checkProblem(t, do(t, "POST", url+"/orders?dry=1", key, `{"amount":10}`), http.StatusUnprocessableEntity, httpidem.ProblemKeyReused)
	checkProblem(t, do(t, "PATCH", url+"/orders", key, `{"amount":10}`), http.StatusUnprocessableEntity, httpidem.ProblemKeyReused)
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

func testReplay(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := runs.Add(1)
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Location", "/orders/42")
		h.Add("Set-Cookie", "session=abc; Path=/; HttpOnly")
		h.Add("Set-Cookie", "theme=dark")
		h["x-lower-case"] = []string{"kept"}
		h.Add("X-Empty", "")
		w.WriteHeader(http.StatusCreated)
		h.Set("X-After-WriteHeader", "dropped")
		fmt.Fprintf(w, `{"order":42,"run":%d}`, n)
	}))
	key := t.Name()
	first := do(t, "POST", url+"/orders", key, `{"amount":10}`)
	if first.status != http.StatusCreated || first.replayed() {
		t.Fatalf("first: got %d (replayed %v); want 201 fresh", first.status, first.replayed())
	}
	for i := 0; i < 2; i++ {
		again := do(t, "POST", url+"/orders", key, `{"amount":10}`)
		if again.status != http.StatusCreated || again.body != `{"order":42,"run":1}` || !again.replayed() {
			t.Fatalf("replay: got %d %q (replayed %v); want 201 %q replayed", again.status, again.body, again.replayed(), first.body)
		}
		if got := again.header.Values("Set-Cookie"); !slices.Equal(got, []string{"session=abc; Path=/; HttpOnly", "theme=dark"}) {
			t.Fatalf("replayed Set-Cookie: got %q; want both cookies in order", got)
		}
		for _, h := range []http.Header{first.header, again.header} {
			if h.Get("X-After-WriteHeader") != "" {
				t.Fatal("a header set after WriteHeader was sent")
			}
		}
		// Every header the first answer had, the replay has, and no other
		// (but for Date and the replay marker).
		want, got := first.header.Clone(), again.header.Clone()
		for _, h := range []http.Header{want, got} {
			h.Del("Date")
			h.Del(httpidem.ReplayedHeader)
		}
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Fatalf("replayed headers:\n got %v\nwant %v", got, want)
		}
	}
	if first.header.Get("X-Lower-Case") != "kept" || first.header.Get("Location") != "/orders/42" {
		t.Fatalf("first answer headers: got %v", first.header)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

func testConcurrent(t *testing.T, e *env) {
	for _, tc := range []struct {
		name string
		wait time.Duration
	}{
		{"NoWait", 0},              // the others get 409 (or a replay, if late)
		{"Wait", 10 * time.Second}, // the others wait, then get the replay
	} {
		t.Run(tc.name, func(t *testing.T) {
			var runs atomic.Int32
			url := e.serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := runs.Add(1)
				time.Sleep(300 * time.Millisecond)
				w.WriteHeader(http.StatusCreated)
				fmt.Fprintf(w, "run %d", n)
			}), httpidem.WithWait(tc.wait))
			const n = 10
			key := t.Name()
			results := make([]result, n)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					r, err := send("POST", url, key, `{"same":true}`)
					if err != nil {
						t.Error(err)
					}
					results[i] = r
				}()
			}
			close(start)
			wg.Wait()
			var fresh, replayed, conflicts int
			for _, r := range results {
				switch {
				case r.status == http.StatusCreated && r.body == "run 1" && !r.replayed():
					fresh++
				case r.status == http.StatusCreated && r.body == "run 1":
					replayed++
				case r.status == http.StatusConflict:
					checkProblem(t, r, http.StatusConflict, httpidem.ProblemInProgress)
					conflicts++
				default:
					t.Fatalf("unexpected answer %d %q", r.status, r.body)
				}
			}
			if got := runs.Load(); got != 1 || fresh != 1 {
				t.Fatalf("handler ran %d times, %d fresh answers; want 1 and 1 (replays %d, conflicts %d)", got, fresh, replayed, conflicts)
			}
			if tc.wait > 0 && replayed != n-1 {
				t.Fatalf("with a wait, %d replays and %d conflicts; want %d replays", replayed, conflicts, n-1)
			}
			t.Logf("%d requests: 1 ran, %d replays, %d conflicts", n, replayed, conflicts)
		})
	}
}

func testTransientReleases(t *testing.T, e *env) {
	for _, status := range []int{http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			var runs atomic.Int32
			url := e.serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if runs.Add(1) == 1 {
					http.Error(w, "try later", status)
					return
				}
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, "done")
			}))
			key := t.Name()
			if r := do(t, "POST", url, key, "{}"); r.status != status || r.body != "try later\n" || r.replayed() {
				t.Fatalf("first: got %d %q; want the handler's %d passed through", r.status, r.body, status)
			}
			if r := do(t, "POST", url, key, "{}"); r.status != http.StatusCreated || r.replayed() {
				t.Fatalf("retry: got %d (replayed %v); want the handler to run again and answer 201", r.status, r.replayed())
			}
			if r := do(t, "POST", url, key, "{}"); r.status != http.StatusCreated || !r.replayed() {
				t.Fatalf("third: got %d (replayed %v); want 201 replayed", r.status, r.replayed())
			}
			if n := runs.Load(); n != 2 {
				t.Fatalf("handler ran %d times; want 2", n)
			}
		})
	}
}

func testClientErrorStored(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusPaymentRequired))
	for i := 0; i < 2; i++ {
		if r := do(t, "POST", url, t.Name(), "{}"); r.status != http.StatusPaymentRequired || r.body != "run 1" || r.replayed() != (i > 0) {
			t.Fatalf("request %d: got %d %q (replayed %v); want the first 402", i, r.status, r.body, r.replayed())
		}
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

func testImplicitStatus(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		if r.URL.Path == "/flush" {
			w.(http.Flusher).Flush()
			w.WriteHeader(http.StatusCreated) // superfluous after Flush
			io.WriteString(w, "<html>flushed</html>")
		}
	}))
	for i := 0; i < 2; i++ {
		r := do(t, "POST", url+"/empty", t.Name()+"-empty", "")
		if r.status != http.StatusOK || r.body != "" || r.replayed() != (i > 0) {
			t.Fatalf("empty handler, request %d: got %d %q (replayed %v); want 200 with no body", i, r.status, r.body, r.replayed())
		}
		r = do(t, "POST", url+"/flush", t.Name()+"-flush", "")
		if r.status != http.StatusOK || r.body != "<html>flushed</html>" || r.replayed() != (i > 0) ||
			!strings.HasPrefix(r.header.Get("Content-Type"), "text/html") {
			t.Fatalf("flushing handler, request %d: got %d %q %v; want 200 sniffed text/html", i, r.status, r.body, r.header)
		}
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times; want 2", n)
	}
}

func testPassThrough(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusOK))
	if r := do(t, "GET", url, "", ""); r.status != http.StatusOK || r.body != "run 1" {
		t.Fatalf("GET without key: got %d %q; want the handler's 200", r.status, r.body)
	}
	for i := 0; i < 2; i++ {
		if r := do(t, "GET", url, t.Name(), ""); r.status != http.StatusOK || r.replayed() {
			t.Fatalf("GET with a key: got %d (replayed %v); want the handler's 200", r.status, r.replayed())
		}
	}
	if r := do(t, "PUT", url, "", "x"); r.status != http.StatusOK {
		t.Fatalf("PUT without key: got %d; want the handler's 200", r.status)
	}
	if n := runs.Load(); n != 4 {
		t.Fatalf("handler ran %d times; want 4", n)
	}
	// WithMethods replaces the protected methods.
	url = e.serve(t, counting(&runs, http.StatusOK), httpidem.WithMethods("PUT"))
	checkProblem(t, do(t, "PUT", url, "", "x"), http.StatusBadRequest, httpidem.ProblemKeyMissing)
	if r := do(t, "POST", url, "", "x"); r.status != http.StatusOK {
		t.Fatalf("POST with WithMethods(PUT): got %d; want the handler's 200", r.status)
	}
}

func testKeyNotRequired(t *testing.T, e *env) {
	var runs atomic.Int32
	url := e.serve(t, counting(&runs, http.StatusCreated), httpidem.WithKeyRequired(false))
	for i := 0; i < 2; i++ {
		if r := do(t, "POST", url, "", "{}"); r.status != http.StatusCreated || r.replayed() {
			t.Fatalf("POST without key: got %d (replayed %v); want the handler's 201", r.status, r.replayed())
		}
	}
	for i := 0; i < 2; i++ {
		if r := do(t, "POST", url, t.Name(), "{}"); r.body != "run 3" {
			t.Fatalf("POST with key: got %q; want run 3 (protected)", r.body)
		}
	}
	if n := runs.Load(); n != 3 {
		t.Fatalf("handler ran %d times; want 3", n)
	}
}

func testBodyRestored(t *testing.T, e *env) {
	url := e.serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusCreated)
		w.Write(b)
	}))
	body := strings.Repeat(`{"line":"échoed"}`, 1000)
	for i := 0; i < 2; i++ {
		if r := do(t, "POST", url, t.Name(), body); r.status != http.StatusCreated || r.body != body {
			t.Fatalf("request %d: got %d and %d bytes; want 201 echoing the %d-byte body", i, r.status, len(r.body), len(body))
		}
	}
}

// testClaimLost: the middleware's heartbeats are all refused, so the
// claim counts as lost a lease after the grant while the handler still
// runs: the handler's context ends with ErrClaimLost, the caller gets 409
// ProblemClaimLost and nothing is stored.
func testClaimLost(t *testing.T, e *env) {
	const lease = 300 * time.Millisecond
	key := t.Name()
	refuser := testcluster.NewHeartbeatRefuser(1 << 30)
	c := newClient(t, client.Config{
		Endpoints:   e.tc.Endpoints(),
		MaxInflight: -1,
		DialOptions: []grpc.DialOption{refuser.DialOption()},
	})
	var runs atomic.Int32
	cause := make(chan error, 1)
	url := serveWith(t, c, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		select {
		case <-r.Context().Done():
			cause <- context.Cause(r.Context())
		case <-time.After(5 * time.Second):
			cause <- errors.New("handler's context was not cancelled")
		}
		w.WriteHeader(http.StatusCreated)
	}), httpidem.WithLease(lease))
	checkProblem(t, do(t, "POST", url, key, "{}"), http.StatusConflict, httpidem.ProblemClaimLost)
	if err := <-cause; !errors.Is(err, client.ErrClaimLost) {
		t.Fatalf("handler's context cause: got %v; want ErrClaimLost", err)
	}
	if refuser.Refused() == 0 {
		t.Fatal("no heartbeat was refused")
	}
	rec, err := e.c.Get(ctxT(t, 5*time.Second), ns, anonymousKey(key))
	if err != nil || rec.State == client.StateCompleted || rec.Response != nil {
		t.Fatalf("record after the lost claim: got %+v, %v; want it not completed", rec, err)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

func testPanicReleases(t *testing.T, e *env) {
	var runs atomic.Int32
	h := httpidem.Middleware(e.c, httpidem.WithNamespace(ns))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) == 1 {
			panic("boom")
		}
		w.WriteHeader(http.StatusCreated)
	}))
	serve := func() (rw *httptest.ResponseRecorder, p any) {
		defer func() { p = recover() }()
		req := httptest.NewRequest("POST", "/orders", strings.NewReader("{}"))
		req.Header.Set("Idempotency-Key", t.Name())
		rw = httptest.NewRecorder()
		h.ServeHTTP(rw, req)
		return rw, nil
	}
	if _, p := serve(); p != "boom" {
		t.Fatalf("first request: recovered %v; want the handler's panic to go on up", p)
	}
	if rw, p := serve(); p != nil || rw.Code != http.StatusCreated {
		t.Fatalf("retry after a panic: got %d, panic %v; want the handler to run again", rw.Code, p)
	}
}

func testOversizeResponse(t *testing.T, e *env) {
	var runs atomic.Int32
	big := strings.Repeat("x", 1<<20+1) // over the server's default 1 MiB
	url := e.serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, big)
	}))
	if r := do(t, "POST", url, t.Name(), "{}"); r.status != http.StatusCreated || r.body != big {
		t.Fatalf("first: got %d and %d bytes; want 201 and the whole body", r.status, len(r.body))
	}
	checkProblem(t, do(t, "POST", url, t.Name(), "{}"), http.StatusConflict, httpidem.ProblemResponseNotStored)
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want 1", n)
	}
}

func testUnavailable(t *testing.T, e *env) {
	dead := newClient(t, client.Config{
		Endpoints:      []string{testcluster.FreeAddr(t)},
		AttemptTimeout: 300 * time.Millisecond, MaxAttempts: 2, BackoffMax: 10 * time.Millisecond,
	})
	var runs atomic.Int32
	url := serveWith(t, dead, counting(&runs, http.StatusCreated))
	r := do(t, "POST", url, t.Name(), "{}")
	checkProblem(t, r, http.StatusServiceUnavailable, httpidem.ProblemUnavailable)
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("Retry-After: got %q; want whole seconds >= 1", r.header.Get("Retry-After"))
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("handler ran %d times; want 0", n)
	}
}

func TestMiddlewarePanicsOnBadConfig(t *testing.T) {
	c, err := client.New(context.Background(), client.Config{Endpoints: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		name string
		c    *client.Client
		opts []httpidem.Option
	}{
		{"NilClient", nil, []httpidem.Option{httpidem.WithNamespace("ok")}},
		{"NoNamespace", c, nil},
		{"BadNamespace", c, []httpidem.Option{httpidem.WithNamespace("Upper Case")}},
		{"LongNamespace", c, []httpidem.Option{httpidem.WithNamespace(strings.Repeat("n", 65))}},
		{"EmptyHeader", c, []httpidem.Option{httpidem.WithNamespace("ok"), httpidem.WithHeader("")}},
		{"LeaseOverHour", c, []httpidem.Option{httpidem.WithNamespace("ok"), httpidem.WithLease(2 * time.Hour)}},
		{"RequireScopeWithoutScope", c, []httpidem.Option{httpidem.WithNamespace("ok"), httpidem.WithoutScope(), httpidem.RequireScope()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if p := recover(); p == nil {
					t.Fatal("Middleware did not panic")
				} else if !strings.HasPrefix(fmt.Sprint(p), "httpidem: ") {
					t.Fatalf("panic %q; want it to start with httpidem: ", p)
				}
			}()
			httpidem.Middleware(tc.c, tc.opts...)
		})
	}
}

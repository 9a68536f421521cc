package httpidem

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/client"
)

func TestStoredResponseRoundTrip(t *testing.T) {
	in := response{
		status: http.StatusCreated,
		header: http.Header{
			"Set-Cookie":   {"a=1; Path=/", "b=2"},
			"x-non-canon":  {"v"},
			"X-Empty":      {""},
			"X-Two-Empty":  {"", ""},
			"X-Nothing":    {},
			"X-Newline":    {"line1\nline2\r"},
			"Content-Type": {"application/json"},
		},
		body: []byte(`{"ok":true}`),
	}
	stored := in.toStored()
	if stored.Code != 201 || stored.Metadata["Set-Cookie"] != "a=1; Path=/\nb=2" || stored.Metadata["X-Non-Canon"] != "v" {
		t.Fatalf("toStored: got %+v", stored)
	}
	out, err := fromStored(&stored)
	if err != nil {
		t.Fatal(err)
	}
	want := http.Header{
		"Set-Cookie":   {"a=1; Path=/", "b=2"},
		"X-Non-Canon":  {"v"},
		"X-Empty":      {""},
		"X-Two-Empty":  {"", ""},
		"X-Newline":    {"line1 line2 "}, // as net/http sends it
		"Content-Type": {"application/json"},
	}
	if out.status != 201 || !reflect.DeepEqual(out.header, want) || string(out.body) != `{"ok":true}` {
		t.Fatalf("fromStored(toStored(r)):\n got %d %v %q\nwant 201 %v %q", out.status, out.header, out.body, want, in.body)
	}
	// Encoding a decoded response gives the same metadata: replays of
	// replays are stable.
	if again := out.toStored(); !reflect.DeepEqual(again.Metadata, stored.Metadata) {
		t.Fatalf("second encoding: got %v; want %v", again.Metadata, stored.Metadata)
	}
}

func TestFromStoredRefusesNonHTTP(t *testing.T) {
	for _, r := range []*client.Response{nil, {Code: 0}, {Code: 5}, {Code: 101}, {Code: 1000}} {
		if _, err := fromStored(r); err == nil {
			t.Errorf("fromStored(%+v): got no error; want errNotHTTP", r)
		}
	}
}

func TestRecorderMimicsNetHTTP(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler func(w http.ResponseWriter)
	}{
		{"Nothing", func(w http.ResponseWriter) {}},
		{"ImplicitOK", func(w http.ResponseWriter) { fmt.Fprint(w, "hello") }},
		{"SniffedHTML", func(w http.ResponseWriter) { fmt.Fprint(w, "<html><body>x</body></html>") }},
		{"SuppressedSniff", func(w http.ResponseWriter) {
			w.Header()["Content-Type"] = nil
			fmt.Fprint(w, "<html>")
		}},
		{"Status", func(w http.ResponseWriter) {
			w.Header().Set("X-A", "1")
			w.WriteHeader(http.StatusAccepted)
			w.Header().Set("X-B", "late")
			w.WriteHeader(http.StatusTeapot)
			fmt.Fprint(w, "body")
		}},
		{"FlushCommits", func(w http.ResponseWriter) {
			w.(http.Flusher).Flush()
			w.Header().Set("X-Late", "1")
			w.WriteHeader(http.StatusCreated)
		}},
		{"Informational", func(w http.ResponseWriter) {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, "made")
		}},
		{"NoContentHasNoBody", func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusNoContent)
			if _, err := fmt.Fprint(w, "dropped"); err != http.ErrBodyNotAllowed {
				panic(fmt.Sprintf("Write after 204: got %v; want ErrBodyNotAllowed", err))
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder()
			tc.handler(rec)
			got := rec.response()

			// What net/http's own writer sends for the same handler.
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { tc.handler(w) }))
			defer srv.Close()
			resp, err := http.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if got.status != resp.StatusCode || string(got.body) != string(body) {
				t.Fatalf("recorder: got %d %q; net/http sent %d %q", got.status, got.body, resp.StatusCode, body)
			}
			for k := range got.header {
				if resp.Header.Get(k) != got.header.Get(k) {
					t.Errorf("header %s: recorder %q; net/http sent %q", k, got.header.Get(k), resp.Header.Get(k))
				}
			}
			for _, k := range []string{"Content-Type", "X-A", "X-B", "X-Late", "Link"} {
				if resp.Header.Get(k) != got.header.Get(k) {
					t.Errorf("header %s: recorder %q; net/http sent %q", k, got.header.Get(k), resp.Header.Get(k))
				}
			}
		})
	}
}

func TestRecorderPanicsOnInvalidCode(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("WriteHeader(42) did not panic")
		}
	}()
	newRecorder().WriteHeader(42)
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		rec  *client.Record
		want int
	}{
		{"NoRecord", nil, 1},
		{"NoLease", &client.Record{}, 1},
		{"Past", &client.Record{LeaseExpiresAt: now.Add(-time.Second)}, 1},
		{"SubSecond", &client.Record{LeaseExpiresAt: now.Add(10 * time.Millisecond)}, 1},
		{"RoundsUp", &client.Record{LeaseExpiresAt: now.Add(2100 * time.Millisecond)}, 3},
		{"Whole", &client.Record{LeaseExpiresAt: now.Add(4 * time.Second)}, 4},
		{"Capped", &client.Record{LeaseExpiresAt: now.Add(30 * time.Second)}, 5},
	} {
		if got := retryAfter(tc.rec, now); got != tc.want {
			t.Errorf("%s: retryAfter got %d; want %d", tc.name, got, tc.want)
		}
	}
}

package httpidem

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/keystore-dev/keystore/client"
)

// response is a complete HTTP response: what a handler wrote, or what is
// replayed.
type response struct {
	status int
	header http.Header
	body   []byte
}

// write sends r to w. Headers already on w (set by outer middleware) stay
// unless r has its own values for them.
func (r response) write(w http.ResponseWriter, replayed bool) {
	h := w.Header()
	for k, vs := range r.header {
		h[k] = vs
	}
	if replayed {
		h.Set(ReplayedHeader, "true")
	}
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}

// toStored encodes r for keystore. Metadata keys are the canonical header
// names; a header's values are joined with "\n", which no value sent on
// the wire contains (net/http turns CR and LF in values into spaces, and so
// does toStored), so fromStored restores each value and their order.
func (r response) toStored() client.Response {
	md := make(map[string]string, len(r.header))
	// Sorted, so that names that canonicalize alike merge in one order.
	for _, k := range slices.Sorted(maps.Keys(r.header)) {
		vs := r.header[k]
		if len(vs) == 0 {
			continue
		}
		parts := make([]string, len(vs))
		for i, v := range vs {
			parts[i] = newlineToSpace.Replace(v)
		}
		joined := strings.Join(parts, "\n")
		ck := http.CanonicalHeaderKey(k)
		if prev, ok := md[ck]; ok {
			joined = prev + "\n" + joined
		}
		md[ck] = joined
	}
	return client.Response{Code: int32(r.status), Metadata: md, Body: r.body}
}

var newlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// errNotHTTP: a stored response that no HTTP handler could have written.
var errNotHTTP = errors.New("stored response is not an HTTP response")

// fromStored decodes a response that toStored encoded.
func fromStored(s *client.Response) (response, error) {
	if s == nil {
		return response{}, fmt.Errorf("%w: none stored", errNotHTTP)
	}
	if s.Code < 200 || s.Code > 999 {
		return response{}, fmt.Errorf("%w: code %d", errNotHTTP, s.Code)
	}
	h := make(http.Header, len(s.Metadata))
	for k, v := range s.Metadata {
		h[k] = strings.Split(v, "\n")
	}
	return response{status: int(s.Code), header: h, body: s.Body}, nil
}

// recorder is the ResponseWriter a protected handler writes to: it keeps
// the status, the headers as of WriteHeader and the whole body, so that
// the response can be stored before it is sent. It mimics net/http's
// writer: an implicit 200 on the first Write or Flush, headers changed
// after WriteHeader ignored, 1xx informational headers dropped, no body for
// 204 and 304, a sniffed Content-Type when the handler set none. Flush
// sends nothing. It does not support Hijack or trailers.
type recorder struct {
	header http.Header
	status int         // 0 until WriteHeader
	sent   http.Header // header as of WriteHeader
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

// Header returns the header map the handler sets.
func (rec *recorder) Header() http.Header { return rec.header }

// WriteHeader records the status and the headers as they are now.
func (rec *recorder) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code)) // as net/http
	}
	if rec.status != 0 {
		return // superfluous, as net/http (which logs it)
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		return // informational: not part of the final response
	}
	rec.status = code
	rec.sent = rec.header.Clone()
}

// Write records body bytes.
func (rec *recorder) Write(p []byte) (int, error) {
	if rec.status == 0 {
		rec.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(rec.status) {
		return 0, http.ErrBodyNotAllowed
	}
	return rec.body.Write(p)
}

// WriteString records body bytes.
func (rec *recorder) WriteString(s string) (int, error) {
	if rec.status == 0 {
		rec.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(rec.status) {
		return 0, http.ErrBodyNotAllowed
	}
	return rec.body.WriteString(s)
}

// Flush commits the status (200 if none was written) as net/http does; it
// sends nothing, since the response is sent only once it is stored.
func (rec *recorder) Flush() {
	if rec.status == 0 {
		rec.WriteHeader(http.StatusOK)
	}
}

// wrote reports whether the handler wrote anything.
func (rec *recorder) wrote() bool { return rec.status != 0 }

// response returns what the handler wrote: 200 with no body if nothing.
func (rec *recorder) response() response {
	if rec.status == 0 {
		rec.WriteHeader(http.StatusOK)
	}
	h := rec.sent
	body := rec.body.Bytes()
	if _, ok := h["Content-Type"]; !ok && len(body) > 0 && h.Get("Transfer-Encoding") == "" {
		h.Set("Content-Type", http.DetectContentType(body)) // as net/http would
	}
	return response{status: rec.status, header: h, body: body}
}

func bodyAllowed(status int) bool {
	return !(status >= 100 && status <= 199 || status == http.StatusNoContent || status == http.StatusNotModified)
}

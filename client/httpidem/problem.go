package httpidem

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Problem types: the "type" member of the RFC 9457 problem details the
// middleware answers with. Each URI leads to its own description here.
const (
	// ProblemKeyMissing (400): a protected request carries no idempotency
	// key.
	ProblemKeyMissing = problemBase + "ProblemKeyMissing"
	// ProblemKeyInvalid (400): the key is empty, longer than MaxKeyLen
	// (232) bytes, not printable UTF-8, sent more than once, or a
	// malformed structured field string.
	ProblemKeyInvalid = problemBase + "ProblemKeyInvalid"
	// ProblemUnauthenticated (401): RequireScope is set and the request's
	// caller could not be identified. Nothing was run.
	ProblemUnauthenticated = problemBase + "ProblemUnauthenticated"
	// ProblemBodyTooLarge (413): the request body is larger than
	// WithMaxBodyBytes allows.
	ProblemBodyTooLarge = problemBase + "ProblemBodyTooLarge"
	// ProblemBodyUnreadable (400): the request body could not be read.
	ProblemBodyUnreadable = problemBase + "ProblemBodyUnreadable"
	// ProblemInProgress (409): another request with the same key is being
	// processed. Retry-After says when its lease ends; retry then.
	ProblemInProgress = problemBase + "ProblemInProgress"
	// ProblemKeyReused (422): the key was used for a different request
	// (another method, route or body). Nothing was run.
	ProblemKeyReused = problemBase + "ProblemKeyReused"
	// ProblemUnavailable (503): the idempotency store could not be reached.
	// Nothing was run; retry after Retry-After.
	ProblemUnavailable = problemBase + "ProblemUnavailable"
	// ProblemClaimLost (409): the request ran, but its hold on the key was
	// lost while it ran (it could not be renewed in time, or another
	// request took the key over), so its response was not stored and the
	// request may run again on retry. Its effects may need to be
	// reconciled.
	ProblemClaimLost = problemBase + "ProblemClaimLost"
	// ProblemResponseNotStored (409): the request ran once, but its
	// response was too large for the idempotency store to keep; retries get
	// this answer instead of the response. Its effects stand.
	ProblemResponseNotStored = problemBase + "ProblemResponseNotStored"
	// ProblemInternal (500): the middleware is misconfigured (e.g. its
	// scope function returned an empty scope), or the key holds a record
	// that is not an HTTP response. Nothing was run.
	ProblemInternal = problemBase + "ProblemInternal"
)

const problemBase = "https://pkg.go.dev/github.com/keystore-dev/keystore/client/httpidem#"

// problem is an RFC 9457 problem details object.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// problemContentType is the media type of problem details (RFC 9457).
const problemContentType = "application/problem+json"

// Titles, one per type: RFC 9457 asks that a title not change between
// occurrences of a type.
var problemTitles = map[string]string{
	ProblemKeyMissing:        "Idempotency key is missing",
	ProblemKeyInvalid:        "Idempotency key is invalid",
	ProblemUnauthenticated:   "Caller is not identified",
	ProblemBodyTooLarge:      "Request body is too large",
	ProblemBodyUnreadable:    "Request body could not be read",
	ProblemInProgress:        "A request is outstanding for this idempotency key",
	ProblemKeyReused:         "Idempotency key is already used",
	ProblemUnavailable:       "Idempotency store is unavailable",
	ProblemClaimLost:         "Idempotency key claim was lost",
	ProblemResponseNotStored: "Response could not be stored for replay",
	ProblemInternal:          "Internal server error",
}

// problemResponse builds the response of a problem: a complete, storable
// HTTP response. retryAfter > 0 adds a Retry-After header, in seconds.
func problemResponse(typ string, status int, detail string, retryAfter int) response {
	body, err := json.Marshal(problem{Type: typ, Title: problemTitles[typ], Status: status, Detail: detail})
	if err != nil {
		panic(err) // strings and an int always marshal
	}
	h := http.Header{"Content-Type": {problemContentType}}
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(retryAfter))
	}
	return response{status: status, header: h, body: body}
}

// writeProblem answers the request with a problem.
func writeProblem(w http.ResponseWriter, typ string, status int, detail string, retryAfter int) {
	problemResponse(typ, status, detail, retryAfter).write(w, false)
}

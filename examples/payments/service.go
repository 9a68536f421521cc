package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// chargeRequest is the body of POST /charge.
type chargeRequest struct {
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
	Card     string `json:"card"`
}

// chargeResponse is the answer to POST /charge.
type chargeResponse struct {
	ChargeID string `json:"charge_id"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
}

// ledger is the card network as the payment service sees it: every charge
// it made, by the Idempotency-Key of the request that made it. It is safe
// for concurrent use.
type ledger struct {
	mu      sync.Mutex
	charges int
	byKey   map[string][]string // key → charge ids, in order
}

func newLedger() *ledger { return &ledger{byKey: map[string][]string{}} }

// charge records one charge and returns its id.
func (l *ledger) charge(key string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.charges++
	id := fmt.Sprintf("ch_%06d", l.charges)
	l.byKey[key] = append(l.byKey[key], id)
	return id
}

// ledgerTotals are the ledger's figures.
type ledgerTotals struct {
	charges      int // charges made
	distinctKeys int // keys charged at least once
	doubled      int // keys charged more than once
}

func (l *ledger) totals() ledgerTotals {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := ledgerTotals{charges: l.charges, distinctKeys: len(l.byKey)}
	for _, ids := range l.byKey {
		if len(ids) > 1 {
			t.doubled++
		}
	}
	return t
}

// chargesOf returns the charge ids made under key.
func (l *ledger) chargesOf(key string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.byKey[key]...)
}

// paymentService is the payment API. Its handler is deliberately naive: it
// charges the card on every call. Making retries safe is the idempotency
// layer's job (see newServiceHandler).
type paymentService struct {
	ledger *ledger
	// latency is how long the card network takes to answer a charge.
	latency time.Duration
}

// ServeHTTP serves POST /charge.
func (s *paymentService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/charge" {
		http.NotFound(w, r)
		return
	}
	var req chargeRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Amount <= 0 || req.Currency == "" {
		http.Error(w, "want a JSON body with a positive amount and a currency", http.StatusBadRequest)
		return
	}
	// The card network takes a while. A caller who left (or a claim that
	// was lost) before the charge went out leaves nothing charged: answer
	// 503 so that a retry may charge.
	select {
	case <-time.After(s.latency):
	case <-r.Context().Done():
		http.Error(w, "charge abandoned", http.StatusServiceUnavailable)
		return
	}
	id := s.ledger.charge(r.Header.Get("Idempotency-Key"))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(chargeResponse{ChargeID: id, Amount: req.Amount, Currency: req.Currency})
}

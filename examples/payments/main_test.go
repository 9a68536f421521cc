package main

import (
	"bytes"
	"context"
	"math"
	"strings"
	"testing"
	"time"
)

func testConfig(unprotected bool) demoConfig {
	return demoConfig{
		Payments:      40,
		Concurrency:   4,
		MaxAttempts:   25,
		Seed:          7,
		Faults:        faults{Drop: 0.1, Cut: 0.1, Lose: 0.3},
		ChargeLatency: 5 * time.Millisecond,
		Unprotected:   unprotected,
	}
}

func runT(t *testing.T, cfg demoConfig) *report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rep, err := runDemo(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	printReport(&out, rep)
	t.Logf("report:\n%s", out.String())
	return rep
}

func TestDemoChargesOncePerPayment(t *testing.T) {
	cfg := testConfig(false)
	rep := runT(t, cfg)
	n := cfg.Payments
	if rep.Answered != n || rep.FirstError != nil {
		t.Fatalf("%d of %d payments answered (first failure: %v); want all", rep.Answered, n, rep.FirstError)
	}
	if rep.Charges != n || rep.Distinct != n || rep.Doubled != 0 || rep.Mismatched != 0 {
		t.Fatalf("charges %d, distinct keys %d, keys charged twice %d, answers not matching the ledger %d; want %d, %d, 0, 0",
			rep.Charges, rep.Distinct, rep.Doubled, rep.Mismatched, n, n)
	}
	// The faults must really have happened, or the test proves nothing:
	// every lost response and cut connection is a retry of a charged
	// payment, which only keystore keeps from charging again.
	if rep.Lost == 0 || rep.Cut == 0 || rep.Dropped == 0 || rep.Replayed == 0 {
		t.Fatalf("lost %d, cut %d, dropped %d, replayed %d; want each > 0", rep.Lost, rep.Cut, rep.Dropped, rep.Replayed)
	}
	if rep.Arrived != rep.Attempts || rep.Attempts <= int64(n) {
		t.Fatalf("the proxy saw %d requests and the client made %d attempts; want them equal and over %d", rep.Arrived, rep.Attempts, n)
	}
	if !rep.OK() {
		t.Fatal("report not OK")
	}
}

// TestDemoUnprotectedDoubleCharges is the control: the same traffic without
// keystore charges some payments more than once, so the faults above are
// the kind keystore must absorb.
func TestDemoUnprotectedDoubleCharges(t *testing.T) {
	cfg := testConfig(true)
	rep := runT(t, cfg)
	if rep.Answered != cfg.Payments {
		t.Fatalf("%d of %d payments answered (first failure: %v); want all", rep.Answered, cfg.Payments, rep.FirstError)
	}
	if rep.DoubleCharges() == 0 || rep.OK() {
		t.Fatalf("charges %d for %d keys without keystore; want double charges", rep.Charges, rep.Distinct)
	}
	// Every cut or lost request was charged and then retried.
	if int64(rep.DoubleCharges()) != rep.Cut+rep.Lost {
		t.Fatalf("double charges %d; want cut %d + lost %d", rep.DoubleCharges(), rep.Cut, rep.Lost)
	}
}

func TestProxyFatesAreSeeded(t *testing.T) {
	f := faults{Drop: 0.1, Cut: 0.2, Lose: 0.3}
	fates := func(seed uint64) []fate {
		p := newFlakyProxy("http://unused", f, seed)
		var out []fate
		for i := range 20000 {
			key := "k" + string(rune('a'+i%26)) + strings.Repeat("x", i%7)
			out = append(out, p.fateOf(key))
		}
		return out
	}
	a, b, c := fates(1), fates(1), fates(2)
	same := 0
	counts := map[fate]int{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("fate %d differs between two proxies with seed 1", i)
		}
		if a[i] == c[i] {
			same++
		}
		counts[a[i]]++
	}
	if same == len(a) {
		t.Fatal("seeds 1 and 2 gave the same fates")
	}
	total := float64(len(a))
	for fa, want := range map[fate]float64{drop: 0.1, cut: 0.9 * 0.2, lose: 0.9 * 0.8 * 0.3} {
		if got := float64(counts[fa]) / total; math.Abs(got-want) > 0.015 {
			t.Errorf("fate %d: share %.3f; want about %.3f", fa, got, want)
		}
	}
}

func TestRun(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--payments", "0"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "--payments must be positive") {
		t.Fatalf("--payments 0: exit %d, stderr %q; want 2 naming the flag", code, errOut.String())
	}
	if code := run([]string{"--failure-rate", "1"}, &out, &errOut); code != 2 {
		t.Fatalf("--failure-rate 1: exit %d; want 2", code)
	}
	out.Reset()
	if code := run([]string{"--unprotected", "--payments", "20", "--seed", "3"}, &out, &errOut); code != 1 || !strings.Contains(out.String(), "double charges: ") || strings.Contains(out.String(), "double charges: 0") {
		t.Fatalf("--unprotected: exit %d, output:\n%s\nwant exit 1 and double charges", code, out.String())
	}
}

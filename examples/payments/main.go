package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run parses the flags, runs the demo and prints its report. It returns
// the exit status: 0 when every payment was charged exactly once, 1 when
// not (or the demo failed), 2 on bad flags.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("payments", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		endpoints   = fs.String("endpoints", "", "keystore cluster as `host:port,...` (default: start a 3-node cluster in this process)")
		payments    = fs.Int("payments", 200, "distinct payments to make")
		concurrency = fs.Int("concurrency", 8, "payments under way at once")
		maxAttempts = fs.Int("max-attempts", 25, "most HTTP attempts per payment")
		seed        = fs.Uint64("seed", 1, "seed of the proxy's faults")
		failureRate = fs.Float64("failure-rate", 0.3, "share of responses the proxy loses after the service answered")
		dropRate    = fs.Float64("drop-rate", 0.1, "share of requests the proxy drops before they reach the service")
		cutRate     = fs.Float64("cut-rate", 0.1, "share of requests whose caller the proxy cuts off while the charge runs")
		latency     = fs.Duration("charge-latency", 5*time.Millisecond, "how long one charge takes at the card network")
		timeout     = fs.Duration("timeout", 40*time.Second, "bound on the whole run")
		unprotected = fs.Bool("unprotected", false, "serve the payment handler without keystore, to see the double charges")
		verbose     = fs.Bool("v", false, "log what keystore and the middleware do (to stderr)")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "payments: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg := demoConfig{
		Payments: *payments, Concurrency: *concurrency, MaxAttempts: *maxAttempts, Seed: *seed,
		Faults:        faults{Drop: *dropRate, Cut: *cutRate, Lose: *failureRate},
		ChargeLatency: *latency, Unprotected: *unprotected,
	}
	for _, ep := range strings.Split(*endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			cfg.Endpoints = append(cfg.Endpoints, ep)
		}
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(stderr, "payments:", err)
		return 2
	}
	level := slog.LevelError
	if *verbose {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	fmt.Fprintf(stdout, "payments demo: %d payments, %d at a time, through a proxy that drops %s of requests, cuts %s mid-charge and loses %s of responses (seed %d)\n",
		cfg.Payments, cfg.Concurrency, pct(cfg.Faults.Drop), pct(cfg.Faults.Cut), pct(cfg.Faults.Lose), cfg.Seed)
	rep, err := runDemo(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "payments:", err)
		return 1
	}
	printReport(stdout, rep)
	if !rep.OK() {
		return 1
	}
	return 0
}

func pct(f float64) string { return fmt.Sprintf("%g%%", f*100) }

func printReport(w io.Writer, r *report) {
	fmt.Fprintf(w, "keystore: %s\n\n", r.Keystore)
	line := func(label string, v any, note string) {
		if note != "" {
			note = "  (" + note + ")"
		}
		fmt.Fprintf(w, "%-28s %v%s\n", label+":", v, note)
	}
	line("payments requested", r.Payments, "")
	line("HTTP attempts made", r.Attempts, fmt.Sprintf("%.2f per payment", float64(r.Attempts)/float64(r.Payments)))
	line("requests dropped by proxy", r.Dropped, "")
	line("connections cut by proxy", r.Cut, "the charge went on without its caller")
	line("responses lost by proxy", r.Lost, "after the card was charged")
	line("payments answered", r.Answered, fmt.Sprintf("%d answers replayed by keystore, %d in-progress or unavailable answers retried", r.Replayed, r.Busy))
	line("charges made by service", r.Charges, "")
	line("distinct keys", r.Distinct, "")
	if r.Mismatched > 0 {
		line("answers not matching ledger", r.Mismatched, "")
	}
	if d := r.DoubleCharges(); d == 0 {
		fmt.Fprintln(w, "double charges: 0")
	} else {
		fmt.Fprintf(w, "double charges: %d  (%d payments charged more than once)\n", d, r.Doubled)
	}
	if r.Answered < r.Payments {
		fmt.Fprintf(w, "UNANSWERED payments: %d (first: %v)\n", r.Payments-r.Answered, r.FirstError)
	}
	fmt.Fprintf(w, "took %s\n", r.Elapsed.Round(time.Millisecond))
}

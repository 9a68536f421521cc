package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

var endpointHealthCommand = command{
	name: "endpoint health", synopsis: "",
	summary: "Ask each endpoint's health service whether it serves (SERVING: storage sound, a leader known, caught up).",
	details: "Exit status 0 when every endpoint serves, 1 when one answers NOT_SERVING, 3 when one cannot\n" +
		"be reached. Health needs no credential.",
	setup: setupEndpointHealth,
}

// endpointHealth is one endpoint's answer.
type endpointHealth struct {
	Endpoint string        `json:"endpoint"`
	Status   string        `json:"status,omitempty"`
	Error    string        `json:"error,omitempty"`
	Took     time.Duration `json:"took_ns"`
	reached  bool
}

func setupEndpointHealth(fs *flag.FlagSet) func(e *env) error {
	return func(e *env) error {
		cred, err := e.g.security.load()
		if err != nil {
			return err
		}
		creds := insecure.NewCredentials()
		if cred.tls != nil {
			creds = credentials.NewTLS(cred.tls)
		}
		eps := e.g.endpointList()
		out := make([]endpointHealth, len(eps))
		var wg sync.WaitGroup
		for i, ep := range eps {
			wg.Go(func() {
				out[i] = checkHealth(ep, creds, e.g.timeout)
			})
		}
		wg.Wait()
		if err := e.out.health(out); err != nil {
			return err
		}
		for _, h := range out {
			if !h.reached {
				return unreachable(fmt.Errorf("%s did not answer", h.Endpoint))
			}
		}
		for _, h := range out {
			if h.Status != healthpb.HealthCheckResponse_SERVING.String() {
				return fmt.Errorf("%s is %s", h.Endpoint, h.Status)
			}
		}
		return nil
	}
}

func checkHealth(ep string, creds credentials.TransportCredentials, timeout time.Duration) endpointHealth {
	h := endpointHealth{Endpoint: ep}
	start := time.Now()
	conn, err := grpc.NewClient(ep, grpc.WithTransportCredentials(creds))
	if err != nil {
		h.Error = err.Error()
		return h
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	h.Took = time.Since(start)
	if err != nil {
		h.Error = describe(err)
		return h
	}
	h.reached, h.Status = true, resp.GetStatus().String()
	return h
}

func (p *printer) health(hs []endpointHealth) error {
	if p.json {
		for _, h := range hs {
			if err := p.encode(h); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tHEALTH\tTOOK")
	for _, h := range hs {
		if !h.reached {
			fmt.Fprintf(tw, "%s\terror: %s\t-\n", h.Endpoint, h.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", h.Endpoint, h.Status, h.Took.Round(time.Microsecond))
	}
	return tw.Flush()
}

// errUnreachable marks a failure to reach the cluster (exit 3) rather than
// a refusal by it (exit 1).
var errUnreachable = errors.New("could not reach the cluster")

type unreachableError struct{ err error }

func (u unreachableError) Error() string { return u.err.Error() }
func (u unreachableError) Unwrap() []error {
	return []error{u.err, errUnreachable}
}

func unreachable(err error) error { return unreachableError{err} }

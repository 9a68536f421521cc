package main

import (
	"context"
	"errors"
	"time"

	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// clusterCaller makes the membership calls of ClusterService, which the
// client package leaves to operators' tools. Any node takes them (a
// follower forwards a change to the leader), so it tries the endpoints in
// the order given, as the client does for the other commands; it calls
// exactly --endpoints (no discovery: a membership change is one call, made
// before discovery could answer). The caller must Close it.
type clusterCaller struct {
	endpoints      []string
	conns          []*grpc.ClientConn
	svcs           []keystorev1.ClusterServiceClient
	attemptTimeout time.Duration
	maxAttempts    int
}

// dialCluster connects to the endpoints (lazily, as gRPC does: a node that
// is down fails its attempt, not the dial), with the TLS and the token the
// flags give, as the client package's connections (credentials.go).
func (e *env) dialCluster() (*clusterCaller, error) {
	cred, err := e.g.security.load()
	if err != nil {
		return nil, err
	}
	opts := cred.dialOptions(e.g.security.insecureToken)
	c := &clusterCaller{
		endpoints: e.g.endpointList(),
		// One stuck node must not eat the whole --timeout.
		attemptTimeout: min(6*time.Second, e.g.timeout),
	}
	c.maxAttempts = max(8, len(c.endpoints)) // the client's default, or every endpoint once
	for _, ep := range c.endpoints {
		conn, err := grpc.NewClient(ep, opts...)
		if err != nil {
			_ = c.Close()
			return nil, err
		}
		c.conns = append(c.conns, conn)
		c.svcs = append(c.svcs, keystorev1.NewClusterServiceClient(conn))
	}
	return c, nil
}

// Close closes every connection.
func (c *clusterCaller) Close() error {
	var err error
	for _, conn := range c.conns {
		err = errors.Join(err, conn.Close())
	}
	return err
}

// call runs fn on the endpoints in order, round after round, until one
// answers or fails for a reason another node would not change (the error
// of such a failure is returned, through fromClusterStatus), or ctx or the
// attempts run out. It returns the endpoint that answered. retry is true
// for every attempt after one whose outcome is unknown: a change it made
// may have been applied even though its answer was lost.
func (c *clusterCaller) call(ctx context.Context, fn func(ctx context.Context, svc keystorev1.ClusterServiceClient, retry bool) error) (string, error) {
	var err error
	for attempt := 0; attempt < c.maxAttempts; attempt++ {
		node := attempt % len(c.svcs)
		if attempt > 0 && node == 0 {
			// Every endpoint failed: give an election a moment.
			if werr := pause(ctx, time.Duration(attempt/len(c.svcs))*100*time.Millisecond); werr != nil {
				break
			}
		}
		actx, cancel := context.WithTimeout(ctx, c.attemptTimeout)
		err = fn(actx, c.svcs[node], attempt > 0)
		cancel()
		if err == nil {
			return c.endpoints[node], nil
		}
		if ctx.Err() != nil || !retryableCode(status.Code(err)) {
			break
		}
	}
	if err == nil {
		err = ctx.Err()
	}
	return "", fromClusterStatus(err)
}

// retryableCode: the node, or its quorum, could not be reached in time;
// another node, or the same one later, may do better.
func retryableCode(c codes.Code) bool {
	return c == codes.Unavailable || c == codes.DeadlineExceeded
}

// pause sleeps d, capped at a second, or until ctx is done.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(min(d, time.Second))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

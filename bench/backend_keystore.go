package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/keystore-dev/keystore/client"
)

// keystoreNamespace is the namespace every benchmark key lives in.
const keystoreNamespace = "bench"

// keystoreStore talks to keystore through its Go client: Claim with a lease
// and a retention, Complete with the claim's fencing token. With more than
// one client the workers spread over them round-robin (each client has its
// own gRPC connection to every node).
type keystoreStore struct {
	clients []*client.Client
	next    atomic.Uint64
}

// openKeystore makes n clients of endpoints; with sec, each connects over
// TLS and sends the token with every call.
func openKeystore(ctx context.Context, endpoints []string, n int, sec security) (*keystoreStore, error) {
	n = max(n, 1)
	s := &keystoreStore{}
	for range n {
		c, err := client.New(ctx, client.Config{Endpoints: endpoints, TLS: sec.tls, Token: sec.token})
		if err != nil {
			s.Close()
			return nil, err
		}
		s.clients = append(s.clients, c)
	}
	return s, nil
}

// client picks the next client; a lifecycle may use two different ones,
// which is fine: a claim's token is valid on any connection.
func (s *keystoreStore) client() *client.Client {
	if len(s.clients) == 1 {
		return s.clients[0]
	}
	return s.clients[s.next.Add(1)%uint64(len(s.clients))]
}

func (s *keystoreStore) Claim(ctx context.Context, key string, fp []byte) (claim, error) {
	res, err := s.client().Claim(ctx, client.ClaimRequest{
		Namespace:   keystoreNamespace,
		Key:         key,
		Fingerprint: fp,
		Lease:       claimLease,
		Retention:   claimRetention,
	})
	if err != nil {
		return claim{}, err
	}
	switch res.Outcome {
	case client.Acquired:
		return claim{Acquired: true, Token: res.Token}, nil
	case client.Completed:
		if res.Record == nil || res.Record.Response == nil {
			return claim{}, errors.New("completed without a stored response")
		}
		if res.Record.Response.Code != responseCode {
			return claim{Completed: true}, fmt.Errorf("stored code %d; want %d", res.Record.Response.Code, responseCode)
		}
		return claim{Completed: true, Response: res.Record.Response.Body}, nil
	}
	return claim{}, nil // in progress
}

// responseCode is the status stored with every keystore response.
const responseCode = 200

func (s *keystoreStore) Complete(ctx context.Context, key string, _ []byte, c claim, resp []byte) error {
	_, err := s.client().Complete(ctx, client.CompleteRequest{
		Namespace: keystoreNamespace,
		Key:       key,
		Token:     c.Token,
		Response:  client.Response{Code: responseCode, Body: resp},
	})
	return err
}

// leaderIsFirst reports the leader's name and whether the client's first
// endpoint is the leader: the client sends every call to the endpoint that
// answered last (the first one, while it answers), and a follower forwards
// writes to the leader, one more hop. Empty when no node knew.
func (s *keystoreStore) leaderIsFirst(ctx context.Context) (leader string, first bool) {
	sts := s.clients[0].Status(ctx)
	for _, st := range sts {
		if st.Err == nil && st.Status.GetLeader() != "" {
			leader = st.Status.GetLeader()
			break
		}
	}
	if leader == "" || len(sts) == 0 || sts[0].Err != nil {
		return leader, false
	}
	return leader, sts[0].Status.GetName() == leader
}

func (s *keystoreStore) Close() error {
	var err error
	for _, c := range s.clients {
		err = errors.Join(err, c.Close())
	}
	return err
}

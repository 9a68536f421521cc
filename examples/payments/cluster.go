package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/server"
)

// embeddedCluster is a three-node keystore cluster in this process, on
// loopback ports the OS picked and a temporary directory. Stop it.
type embeddedCluster struct {
	dir       string
	servers   []*server.Server
	endpoints []string
}

// startCluster starts the nodes and waits until every one of them serves.
func startCluster(ctx context.Context, size int, logger *slog.Logger) (_ *embeddedCluster, err error) {
	dir, err := os.MkdirTemp("", "keystore-payments-")
	if err != nil {
		return nil, err
	}
	c := &embeddedCluster{dir: dir}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()

	// Listen first: the listeners' ports name the members, and no other
	// process can take a port between choosing and using it.
	names := make([]string, size)
	peerLis := make([]net.Listener, size)
	clientLis := make([]net.Listener, size)
	defer func() {
		if err != nil {
			for i := range size {
				for _, l := range []net.Listener{peerLis[i], clientLis[i]} {
					if l != nil {
						_ = l.Close()
					}
				}
			}
		}
	}()
	members := map[string]string{}
	for i := range size {
		names[i] = fmt.Sprintf("n%d", i+1)
		if peerLis[i], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, err
		}
		if clientLis[i], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, err
		}
		members[names[i]] = peerLis[i].Addr().String()
	}
	for i, name := range names {
		s, err := server.New(server.Config{
			Name:           name,
			DataDir:        filepath.Join(dir, name),
			ClientAddr:     clientLis[i].Addr().String(),
			PeerAddr:       peerLis[i].Addr().String(),
			InitialCluster: members,
			ClientListener: clientLis[i],
			PeerListener:   peerLis[i],
			Logger:         logger.With("component", "keystore"),
		})
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", name, err)
		}
		if err := s.Start(); err != nil {
			return nil, fmt.Errorf("node %s: %w", name, err)
		}
		// From here Stop closes the node's listeners.
		peerLis[i], clientLis[i] = nil, nil
		c.servers = append(c.servers, s)
		c.endpoints = append(c.endpoints, s.ClientAddr())
	}
	if err := waitServing(ctx, c.endpoints); err != nil {
		return nil, err
	}
	return c, nil
}

// waitServing polls every endpoint's status until all serve under one
// leader, or ctx ends.
func waitServing(ctx context.Context, endpoints []string) error {
	ks, err := client.New(ctx, client.Config{Endpoints: endpoints})
	if err != nil {
		return err
	}
	defer ks.Close()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		ready, last := 0, ""
		for _, n := range ks.Status(ctx) {
			switch {
			case n.Err != nil:
				last = fmt.Sprintf("%s: %v", n.Endpoint, n.Err)
			case !n.Status.GetServing() || n.Status.GetLeader() == "":
				last = fmt.Sprintf("%s: not serving yet", n.Endpoint)
			default:
				ready++
			}
		}
		if ready == len(endpoints) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not serving: %w (last: %s)", ctx.Err(), last)
		case <-t.C:
		}
	}
}

// Endpoints returns the nodes' client addresses.
func (c *embeddedCluster) Endpoints() []string { return c.endpoints }

// Stop stops every node, waits for them, and removes their data.
func (c *embeddedCluster) Stop() {
	for _, s := range c.servers {
		s.Stop(time.Second)
	}
	c.servers = nil
	_ = os.RemoveAll(c.dir)
}

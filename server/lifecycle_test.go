package server_test

import (
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/server"
)

// failingListener accepts nothing: its Accept blocks until fail is closed,
// then fails with err (until Close, after which it reports net.ErrClosed).
type failingListener struct {
	net.Listener // the real one: its address, and Close
	fail         chan struct{}
	err          error

	closeOnce sync.Once
	closed    chan struct{}
}

func newFailingListener(t *testing.T, err error) *failingListener {
	t.Helper()
	l, lerr := net.Listen("tcp", "127.0.0.1:0")
	if lerr != nil {
		t.Fatal(lerr)
	}
	return &failingListener{Listener: l, fail: make(chan struct{}), err: err, closed: make(chan struct{})}
}

func (l *failingListener) Accept() (net.Conn, error) {
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.fail:
		return nil, l.err
	}
}

func (l *failingListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// startNode starts a one-member cluster on the given listeners.
func startNode(t *testing.T, client, peer net.Listener) *server.Server {
	t.Helper()
	s, err := server.New(server.Config{
		Name:           "n1",
		DataDir:        t.TempDir(),
		ClientListener: client,
		PeerListener:   peer,
		InitialCluster: map[string]string{"n1": peer.Addr().String()},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitStopped returns what s.Wait returns, failing the test if it does
// not return within 10s.
func waitStopped(t *testing.T, s *server.Server) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return within 10s")
		return nil
	}
}

var errAcceptFailed = errors.New("accept failed for good")

// TestListenerFailureStopsNode: a port whose listener fails for good stops
// the whole node (the other port closes too), and Wait returns the
// failure. The peer port's listener is first split by raftnode, whose
// accept loop ends only when the port is closed: that reaches the peer
// gRPC server as net.ErrClosed.
func TestListenerFailureStopsNode(t *testing.T) {
	for _, tc := range []struct {
		port      string
		acceptErr error
		want      error
	}{
		{"client", errAcceptFailed, errAcceptFailed},
		{"peer", net.ErrClosed, net.ErrClosed},
	} {
		t.Run(tc.port, func(t *testing.T) {
			failing := newFailingListener(t, tc.acceptErr)
			other, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			client, peer := net.Listener(failing), other
			if tc.port == "peer" {
				client, peer = other, failing
			}
			s := startNode(t, client, peer)
			defer s.Stop(0)

			close(failing.fail)
			err = waitStopped(t, s)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.port) {
				t.Fatalf("Wait = %v; want an error of the %s port wrapping %q", err, tc.port, tc.want)
			}
			if c, err := net.DialTimeout("tcp", other.Addr().String(), time.Second); err == nil {
				c.Close()
				t.Errorf("the other port (%s) still accepts after the node stopped itself", other.Addr())
			}
			if err2 := waitStopped(t, s); err2 != err {
				t.Errorf("a second Wait = %v; want %v again", err2, err)
			}
		})
	}
}

// TestStopWaitReturnsNil: after a graceful Stop, Wait returns nil, however
// many wait.
func TestStopWaitReturnsNil(t *testing.T) {
	client, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := startNode(t, client, peer)
	waited := make(chan error, 2)
	for range 2 {
		go func() { waited <- s.Wait() }()
	}
	s.Stop(time.Second)
	for range 2 {
		select {
		case err := <-waited:
			if err != nil {
				t.Errorf("Wait after Stop = %v; want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Wait did not return within 10s of Stop")
		}
	}
}

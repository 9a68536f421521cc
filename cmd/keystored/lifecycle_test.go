//go:build unix

package main

import (
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// freeAddr returns a loopback address no one listened on a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// TestSignalStopsKeystoredCleanly: SIGTERM stops a serving keystored
// gracefully, and run returns nil (a listener's failure would make it
// return that error instead: server's TestListenerFailureStopsNode).
func TestSignalStopsKeystoredCleanly(t *testing.T) {
	clientAddr := freeAddr(t)
	// A data dir someone made world-readable: keystored tightens it.
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- run([]string{"--data-dir", dataDir, "--client-addr", clientAddr, "--peer-addr", freeAddr(t), "--log-level", "error"})
	}()
	// run handles SIGTERM from before it listens: once the client port
	// answers, the signal reaches run, not the test binary's default
	// handler.
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("run returned before the signal: %v", err)
		default:
		}
		c, err := net.DialTimeout("tcp", clientAddr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keystored does not answer on %s: %v", clientAddr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every file and directory under the data dir is private to this
	// user: it holds every namespace's stored responses.
	n := 0
	err := filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %v; want no access for group or others", path, perm)
		}
		n++
		return nil
	})
	if err != nil || n < 5 {
		t.Fatalf("walked %d entries of the data dir: %v", n, err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after SIGTERM = %v; want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return within 15s of SIGTERM")
	}
}

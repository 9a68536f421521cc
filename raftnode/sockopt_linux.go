package raftnode

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// setUserTimeout makes the kernel fail c's writes once data has gone
// unacknowledged for d (TCP_USER_TIMEOUT): a peer that vanished (its host
// or address gone, no reset ever coming) is noticed in d rather than after
// the kernel's retransmissions give up, about 15 minutes, and the sender
// dials again (resolving the peer's name again).
func setUserTimeout(c net.Conn, d time.Duration) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond))
	})
}

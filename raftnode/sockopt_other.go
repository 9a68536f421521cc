//go:build !linux

package raftnode

import (
	"net"
	"time"
)

// setUserTimeout is Linux's TCP_USER_TIMEOUT; elsewhere the write deadline
// and keepalives have to do.
func setUserTimeout(net.Conn, time.Duration) {}

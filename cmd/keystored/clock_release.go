//go:build !faults

package main

import (
	"flag"
	"time"
)

// registerTestFlags registers nothing in release builds; see clock_faults.go.
func registerTestFlags(*flag.FlagSet) {}

// testClock is nil in release builds: the real clock.
func testClock() func() time.Time { return nil }

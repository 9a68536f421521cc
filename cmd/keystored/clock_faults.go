//go:build faults

package main

import (
	"flag"
	"os"
	"strings"
	"time"
)

// In fault-test builds (-tags faults) keystored's wall clock can be skewed
// and jumped at run time: the file named by --test-clock-offset-file holds
// an offset (a Go duration, e.g. "-90s" or "10m"), read on every look at
// the clock. Release builds have no such flag.
var clockOffsetFile string

func registerTestFlags(fs *flag.FlagSet) {
	fs.StringVar(&clockOffsetFile, "test-clock-offset-file", "", "fault tests only: a file holding the wall clock's offset")
}

func testClock() func() time.Time {
	if clockOffsetFile == "" {
		return nil
	}
	return func() time.Time {
		b, err := os.ReadFile(clockOffsetFile)
		if err != nil {
			return time.Now()
		}
		d, err := time.ParseDuration(strings.TrimSpace(string(b)))
		if err != nil {
			return time.Now()
		}
		return time.Now().Add(d)
	}
}

package httpidem

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestLogsNeverShowKeys: a logged key appears as its hash.
func TestLogsNeverShowKeys(t *testing.T) {
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Warn("claim failed", "key", logKey("customer-4711-order-9"))
	if strings.Contains(buf.String(), "4711") || !strings.Contains(buf.String(), "key=") {
		t.Fatalf("log line %q shows the key; want its hash", buf.String())
	}
}

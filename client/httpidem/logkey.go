package httpidem

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
)

// logKey is an idempotency key as the logs show it: the first 8 bytes of
// its SHA-256, enough to follow one key through the logs, never the key
// itself (keys often carry customer or order identifiers). Responses are
// never logged.
type logKey string

func (k logKey) LogValue() slog.Value {
	sum := sha256.Sum256([]byte(k))
	return slog.StringValue(hex.EncodeToString(sum[:8]))
}

package rules

import (
	"errors"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
)

// Errors of the contract's rules: each is a way the rules refuse a command.
// The API maps them to gRPC codes in one place (api/errors.go).
var (
	// ErrNotFound is returned when a record is absent or expired.
	ErrNotFound = errors.New("rules: record not found")
	// ErrFingerprintMismatch is returned when a Claim's fingerprint differs
	// from the record's (both non-empty).
	ErrFingerprintMismatch = errors.New("rules: fingerprint mismatch")
	// ErrClaimLost is returned when a token is not the record's current one,
	// or the record is gone.
	ErrClaimLost = errors.New("rules: claim lost")
	// ErrAlreadyCompleted is returned by Release and Heartbeat on a
	// completed record.
	ErrAlreadyCompleted = errors.New("rules: already completed")
	// ErrInvalidCommand is returned for a command that cannot be applied
	// (the API validates first, so this means a bug or a corrupt entry).
	ErrInvalidCommand = errors.New("rules: invalid command")
)

// ResultError returns the error a Result carries, or nil.
func ResultError(r *statev1.Result) error {
	switch r.GetError() {
	case statev1.Error_ERROR_UNSPECIFIED:
		return nil
	case statev1.Error_ERROR_FINGERPRINT_MISMATCH:
		return ErrFingerprintMismatch
	case statev1.Error_ERROR_CLAIM_LOST:
		return ErrClaimLost
	case statev1.Error_ERROR_ALREADY_COMPLETED:
		return ErrAlreadyCompleted
	default:
		return ErrInvalidCommand
	}
}

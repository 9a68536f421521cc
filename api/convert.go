package api

import (
	"time"

	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// toRecord converts a stored record to the public one.
func toRecord(namespace, key string, r *statev1.Record) *keystorev1.Record {
	if r == nil {
		return nil
	}
	out := &keystorev1.Record{
		Namespace:      namespace,
		Key:            key,
		State:          toState(r.GetState()),
		Fingerprint:    r.GetFingerprint(),
		Token:          r.GetToken(),
		Attempt:        r.GetAttempt(),
		Owner:          r.GetOwner(),
		CreatedAt:      timestamp(r.GetCreatedAt()),
		LeaseExpiresAt: timestamp(r.GetLeaseExpiresAt()),
		CompletedAt:    timestamp(r.GetCompletedAt()),
		ExpiresAt:      timestamp(r.GetExpiresAt()),
	}
	if resp := r.GetResponse(); resp != nil && r.GetState() == statev1.State_STATE_COMPLETED {
		out.Response = &keystorev1.Response{Code: resp.GetCode(), Metadata: resp.GetMetadata(), Body: resp.GetBody()}
	}
	return out
}

func toState(s statev1.State) keystorev1.RecordState {
	switch s {
	case statev1.State_STATE_IN_PROGRESS:
		return keystorev1.RecordState_RECORD_STATE_IN_PROGRESS
	case statev1.State_STATE_COMPLETED:
		return keystorev1.RecordState_RECORD_STATE_COMPLETED
	}
	return keystorev1.RecordState_RECORD_STATE_UNSPECIFIED
}

func toOutcome(o statev1.Outcome) keystorev1.ClaimOutcome {
	switch o {
	case statev1.Outcome_OUTCOME_ACQUIRED:
		return keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED
	case statev1.Outcome_OUTCOME_IN_PROGRESS:
		return keystorev1.ClaimOutcome_CLAIM_OUTCOME_IN_PROGRESS
	case statev1.Outcome_OUTCOME_COMPLETED:
		return keystorev1.ClaimOutcome_CLAIM_OUTCOME_COMPLETED
	}
	return keystorev1.ClaimOutcome_CLAIM_OUTCOME_UNSPECIFIED
}

func fromResponse(r *keystorev1.Response) *statev1.Response {
	if r == nil {
		return &statev1.Response{}
	}
	return &statev1.Response{Code: r.GetCode(), Metadata: r.GetMetadata(), Body: r.GetBody()}
}

// timestamp converts log time (Unix nanoseconds) to a Timestamp; zero is
// unset.
func timestamp(ns int64) *timestamppb.Timestamp {
	if ns == 0 {
		return nil
	}
	return timestamppb.New(time.Unix(0, ns))
}

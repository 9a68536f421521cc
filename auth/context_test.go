package auth

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// testPrincipals returns testPolicy's principals by name.
func testPrincipals(t *testing.T) map[string]*Principal {
	t.Helper()
	pol, err := ParsePolicy([]byte(testPolicy()))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]*Principal{
		"payments-service": pol.byToken(tokPayments),
		"orders-service":   pol.certs["orders"],
		"ops":              pol.byToken(tokOps),
		"auditor":          pol.byToken(tokAuditor),
	}
}

func TestFromContext(t *testing.T) {
	p := testPrincipals(t)["ops"]
	tests := []struct {
		name   string
		ctx    context.Context
		want   *Principal
		wantOK bool
	}{
		{"none", context.Background(), nil, false},
		{"nil principal", NewContext(context.Background(), nil), nil, false},
		{"principal", NewContext(context.Background(), p), p, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := FromContext(tt.ctx)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("FromContext = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// checkStatus fails t unless err has code want and, when msg is not empty,
// message msg.
func checkStatus(t *testing.T, err error, want codes.Code, msg string) {
	t.Helper()
	if want == codes.OK {
		if err != nil {
			t.Errorf("got error %v; want none", err)
		}
		return
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != want {
		t.Errorf("got error %v; want code %v", err, want)
		return
	}
	if msg != "" && st.Message() != msg {
		t.Errorf("got message %q; want %q", st.Message(), msg)
	}
}

func TestCheckNamespace(t *testing.T) {
	ps := testPrincipals(t)
	long := strings.Repeat("n", 200)
	// 63 ASCII bytes then a 3-byte character: cut before it, not inside.
	longUTF8 := strings.Repeat("n", 63) + "€" + strings.Repeat("n", 10)
	tests := []struct {
		principal string // "" for a context without one
		namespace string
		want      codes.Code
		msg       string
	}{
		{"", "payments", codes.OK, ""},
		{"", "anything at all", codes.OK, ""},
		{"payments-service", "payments", codes.OK, ""},
		{"payments-service", "refunds", codes.OK, ""},
		{"payments-service", "orders", codes.PermissionDenied, `permission denied: principal "payments-service" may not use namespace "orders"`},
		{"payments-service", "", codes.PermissionDenied, `permission denied: principal "payments-service" may not use namespace ""`},
		{"payments-service", "pay\"ments\n", codes.PermissionDenied, `permission denied: principal "payments-service" may not use namespace "pay\"ments\n"`},
		{"payments-service", long, codes.PermissionDenied, `permission denied: principal "payments-service" may not use namespace "` + long[:64] + `"...`},
		{"payments-service", longUTF8, codes.PermissionDenied, `permission denied: principal "payments-service" may not use namespace "` + longUTF8[:63] + `"...`},
		{"orders-service", "orders", codes.OK, ""},
		{"orders-service", "payments", codes.PermissionDenied, `permission denied: principal "orders-service" may not use namespace "payments"`},
		{"ops", "payments", codes.OK, ""},
		{"ops", "orders", codes.OK, ""},
		{"auditor", "payments", codes.PermissionDenied, `permission denied: principal "auditor" may not use namespace "payments"`},
	}
	for _, tt := range tests {
		t.Run(tt.principal+"/"+tt.namespace, func(t *testing.T) {
			ctx := context.Background()
			if tt.principal != "" {
				ctx = NewContext(ctx, ps[tt.principal])
			}
			checkStatus(t, CheckNamespace(ctx, tt.namespace), tt.want, tt.msg)
		})
	}
}

func TestCheckAdmin(t *testing.T) {
	ps := testPrincipals(t)
	tests := []struct {
		principal string // "" for a context without one
		want      codes.Code
		msg       string
	}{
		{"", codes.OK, ""},
		{"ops", codes.OK, ""},
		{"auditor", codes.OK, ""},
		{"payments-service", codes.PermissionDenied, `permission denied: principal "payments-service" may not call admin RPCs`},
		{"orders-service", codes.PermissionDenied, `permission denied: principal "orders-service" may not call admin RPCs`},
	}
	for _, tt := range tests {
		t.Run(tt.principal, func(t *testing.T) {
			ctx := context.Background()
			if tt.principal != "" {
				ctx = NewContext(ctx, ps[tt.principal])
			}
			checkStatus(t, CheckAdmin(ctx), tt.want, tt.msg)
		})
	}
}

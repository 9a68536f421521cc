package grpcidem_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log"
	"net"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/client/grpcidem"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

func ExampleUnaryServerInterceptor() {
	ks, err := client.New(context.Background(), client.Config{
		Endpoints: []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()

	// Clients authenticate with certificates that the server verifies;
	// by default (DefaultScope) each certificate's CommonName has keys
	// of its own. Without one, the authorization metadata (hashed) names
	// the caller; with neither, RequireScope fails the call.
	serverCert, err := tls.LoadX509KeyPair("server.pem", "server-key.pem")
	if err != nil {
		log.Fatal(err)
	}
	clientCAs := x509.NewCertPool() // ... the CAs of the clients' certificates
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientCAs:    clientCAs,
		ClientAuth:   tls.VerifyClientCertIfGiven,
	})

	// Calls to Charge that carry the idempotency-key metadata run once per
	// caller and key; their retries get the stored response (or error)
	// back.
	srv := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(grpcidem.UnaryServerInterceptor(ks,
		grpcidem.WithNamespace("payments"),
		grpcidem.WithMethods("/payments.v1.Payments/Charge"),
		grpcidem.WithWait(5*time.Second), // a retry racing the first call waits for its outcome
		grpcidem.RequireScope(),
	)))
	// paymentsv1.RegisterPaymentsServer(srv, &payments{})

	lis, err := net.Listen("tcp", ":8443")
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(lis))
}

// accountKey is the context key under which the service's authentication
// interceptor puts the caller's account.
type accountKey struct{}

// Scope keys by the account the service's authentication found, rather
// than by the authorization metadata: a client whose access token is
// refreshed between a call and its retry is still the same caller.
func ExampleWithScope() {
	ks, err := client.New(context.Background(), client.Config{Endpoints: []string{"127.0.0.1:7001"}})
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()

	// authenticate stands for the service's own authentication.
	authenticate := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		account := "acct-1" // ... from a verified token's subject
		return handler(context.WithValue(ctx, accountKey{}, account), req)
	}
	byAccount := func(ctx context.Context) (scope string, ok bool) {
		account, ok := ctx.Value(accountKey{}).(string)
		return account, ok && account != ""
	}
	// Interceptors run in order: authentication first, so that the
	// account is in the context the idempotency interceptor sees.
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(
		authenticate,
		grpcidem.UnaryServerInterceptor(ks,
			grpcidem.WithNamespace("payments"),
			grpcidem.WithMethods("/payments.v1.Payments/Charge"),
			grpcidem.WithScope(byAccount),
			grpcidem.RequireScope(), // no account: UNAUTHENTICATED
		),
	))
	// paymentsv1.RegisterPaymentsServer(srv, &payments{})

	lis, err := net.Listen("tcp", ":8443")
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(lis))
}

package grpcidem_test

import (
	"context"
	"log"
	"net"
	"time"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/client/grpcidem"
	"google.golang.org/grpc"
)

func ExampleUnaryServerInterceptor() {
	ks, err := client.New(context.Background(), client.Config{
		Endpoints: []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()

	// Calls to Charge that carry the idempotency-key metadata run once per
	// key; their retries get the stored response (or error) back.
	srv := grpc.NewServer(grpc.UnaryInterceptor(grpcidem.UnaryServerInterceptor(ks,
		grpcidem.WithNamespace("payments"),
		grpcidem.WithMethods("/payments.v1.Payments/Charge"),
		grpcidem.WithWait(5*time.Second), // a retry racing the first call waits for its outcome
	)))
	// paymentsv1.RegisterPaymentsServer(srv, &payments{})

	lis, err := net.Listen("tcp", ":8443")
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(lis))
}

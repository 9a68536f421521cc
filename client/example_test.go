package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/keystore-dev/keystore/client"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

func ExampleNew() {
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{
		Endpoints: []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	res, err := c.Claim(ctx, client.ClaimRequest{Namespace: "payments", Key: "order-42", Lease: 30 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Outcome, res.Token)
}

func ExampleClient_Do() {
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Endpoints: []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	body := []byte(`{"order":42,"amount":1999}`)
	res, err := c.Do(ctx, "payments", "order-42", client.Fingerprint("POST", "/charge", body),
		func(ctx context.Context) (client.Response, error) {
			chargeID, err := chargeCard(ctx, body) // runs once per key, whatever the retries
			if errors.Is(err, errCardNetworkDown) {
				return client.Response{}, client.Retryable(err) // release: a retry may charge
			}
			if err != nil {
				return client.Response{Code: 402, Body: []byte(err.Error())}, err // stored and replayed
			}
			return client.Response{Code: 201, Body: []byte(chargeID)}, nil
		})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("charge %s (replayed: %v)\n", res.Response.Body, res.Replayed)
}

var errCardNetworkDown = errors.New("card network down")

func chargeCard(context.Context, []byte) (string, error) { return "ch_1", nil }

// ExampleConfig_metrics exports the client's gRPC metrics (calls started,
// handled by code, latency by method) to Prometheus with
// go-grpc-middleware's provider, through Config.DialOptions.
func ExampleConfig_metrics() {
	metrics := grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram())
	prometheus.MustRegister(metrics)
	c, err := client.New(context.Background(), client.Config{
		Endpoints: []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"},
		DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(metrics.UnaryClientInterceptor()),
			grpc.WithChainStreamInterceptor(metrics.StreamClientInterceptor()),
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

package httpidem_test

import (
	"context"
	"fmt"
	"log"
	"net/http"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/client/httpidem"
)

func ExampleMiddleware() {
	c, err := client.New(context.Background(), client.Config{
		Endpoints: []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	createOrder := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Runs once per Idempotency-Key; retries get this response back.
		w.Header().Set("Location", "/orders/42")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintln(w, `{"order":42}`)
	})

	mux := http.NewServeMux()
	mux.Handle("POST /orders", httpidem.Middleware(c, httpidem.WithNamespace("orders"))(createOrder))
	log.Fatal(http.ListenAndServe(":8080", mux))
}

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
		// Runs once per caller and Idempotency-Key; retries get this
		// response back.
		w.Header().Set("Location", "/orders/42")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintln(w, `{"order":42}`)
	})

	// By default keys are scoped by caller (DefaultScope): by the verified
	// client certificate's CommonName, else by the Authorization header
	// (hashed). Callers with neither share one anonymous scope;
	// RequireScope answers them 401 instead.
	mux := http.NewServeMux()
	mux.Handle("POST /orders", httpidem.Middleware(c,
		httpidem.WithNamespace("orders"),
		httpidem.RequireScope(),
	)(createOrder))
	log.Fatal(http.ListenAndServe(":8080", mux))
}

// accountKey is the context key under which authenticate puts the
// caller's account.
type accountKey struct{}

// authenticate stands for the service's own authentication middleware.
func authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		account := "acct-1" // ... from a session cookie, a verified JWT's subject, ...
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), accountKey{}, account)))
	})
}

// Scope keys by the account the service's authentication found, rather
// than by the Authorization header: a client whose access token is
// refreshed between a request and its retry is still the same caller.
func ExampleWithScope() {
	c, err := client.New(context.Background(), client.Config{Endpoints: []string{"127.0.0.1:7001"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	byAccount := func(r *http.Request) (scope string, ok bool) {
		account, ok := r.Context().Value(accountKey{}).(string)
		return account, ok && account != ""
	}
	createOrder := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	})
	idem := httpidem.Middleware(c,
		httpidem.WithNamespace("orders"),
		httpidem.WithScope(byAccount),
		httpidem.RequireScope(), // no account: 401
	)
	// The account is known only inside authenticate, so the middleware
	// goes within it.
	http.Handle("POST /orders", authenticate(idem(createOrder)))
	log.Fatal(http.ListenAndServe(":8080", nil))
}

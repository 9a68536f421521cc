// Command consumer is a stand-in for a program that imports keystore's Go
// client: scripts/client-mincheck.sh builds it against the minimum versions
// its go.mod states, with the oldest Go toolchain keystore's go.mod allows,
// to show that importing the client forces neither a newer Go release nor
// unreleased dependencies on its callers. It is a module of its own (with
// a replace of keystore to this checkout), outside keystore's module.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"

	"google.golang.org/grpc"

	"github.com/keystore-dev/keystore/client"
	"github.com/keystore-dev/keystore/client/grpcidem"
	"github.com/keystore-dev/keystore/client/httpidem"
)

func main() {
	c, err := client.New(context.Background(), client.Config{Endpoints: []string{"127.0.0.1:7001"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer c.Close()
	_ = grpc.NewServer(grpc.UnaryInterceptor(grpcidem.UnaryServerInterceptor(c)))
	_ = httpidem.Middleware(c)(http.NotFoundHandler())
	fmt.Printf("%x\n", client.Fingerprint("POST", "/payments", nil))
}

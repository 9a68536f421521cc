package clustertest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/auth"
	"github.com/keystore-dev/keystore/cluster-test/harness"
	"github.com/keystore-dev/keystore/internal/certgen"
	peerv1 "github.com/keystore-dev/keystore/proto/keystore/peer/v1"
	statev1 "github.com/keystore-dev/keystore/proto/keystore/state/v1"
	keystorev1 "github.com/keystore-dev/keystore/proto/keystore/v1"
	"github.com/keystore-dev/keystore/raftnode"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// secureFiles are the certificates, keys and policy of a secured cluster.
type secureFiles struct {
	dir    string
	caPool *x509.CertPool
}

func (f secureFiles) path(name string) string { return filepath.Join(f.dir, name) }

// clientTLS is a client's TLS configuration: the cluster's CA, and the
// client certificate called cert (none when "").
func (f secureFiles) clientTLS(t *testing.T, cert string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: f.caPool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(f.path(cert+".crt"), f.path(cert+".key"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

const (
	paymentsToken = "payments-token-0123456789abcdef0123456789abcdef"
	ordersToken   = "orders-token-0123456789abcdef0123456789abcdef"
)

// writeSecureFiles makes a CA, node certificates n1..n3 (names n<i>,
// localhost, 127.0.0.1), client certificates "admin" and "intruder" of
// the same CA, a certificate of another CA naming n1, and a policy:
// payments and orders tokens for their namespaces, the admin certificate
// an admin of every namespace.
func writeSecureFiles(t *testing.T, names []string) secureFiles {
	t.Helper()
	f := secureFiles{dir: t.TempDir(), caPool: x509.NewCertPool()}
	ca, err := certgen.NewCA("keystore test CA")
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFile(f.path("ca.crt")); err != nil {
		t.Fatal(err)
	}
	f.caPool.AddCert(ca.Cert)
	issue := func(ca *certgen.CA, file string, o certgen.IssueOptions) {
		leaf, err := ca.Issue(o)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := certgen.WriteFiles(f.dir, file, leaf); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		issue(ca, n, certgen.IssueOptions{CommonName: n, DNSNames: []string{n, "localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Client: true})
	}
	issue(ca, "admin", certgen.IssueOptions{CommonName: "admin", Client: true})
	issue(ca, "intruder", certgen.IssueOptions{CommonName: "intruder", Client: true, Server: true})
	other, err := certgen.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	issue(other, "stranger", certgen.IssueOptions{CommonName: names[0], DNSNames: []string{names[0], "localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Client: true})
	policy := "principals:\n" +
		"  - name: payments\n    token_sha256: " + auth.HashToken(paymentsToken) + "\n    namespaces: [payments]\n" +
		"  - name: orders\n    token_sha256: " + auth.HashToken(ordersToken) + "\n    namespaces: [orders]\n" +
		"  - name: ops\n    cert_cn: admin\n    namespaces: [\"*\"]\n    admin: true\n"
	for _, n := range names {
		// A node presents its own certificate when it joins (MemberAdd).
		policy += "  - name: node-" + n + "\n    cert_cn: " + n + "\n    namespaces: []\n    admin: true\n"
	}
	if err := os.WriteFile(f.path("policy.yaml"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// secureHarness makes a harness cluster run with client TLS, peer mutual
// TLS and an authorization policy; the harness calls as the admin.
func secureHarness(t *testing.T, hc *harness.Config) secureFiles {
	names := []string{"n1", "n2", "n3"}
	f := writeSecureFiles(t, names)
	hc.Args = append(hc.Args, "--tls-client-ca-file", f.path("ca.crt"), "--peer-tls-ca-file", f.path("ca.crt"), "--auth-policy-file", f.path("policy.yaml"))
	hc.NodeArgs = func(n string) []string {
		return []string{"--tls-cert-file", f.path(n + ".crt"), "--tls-key-file", f.path(n + ".key"),
			"--peer-tls-cert-file", f.path(n + ".crt"), "--peer-tls-key-file", f.path(n + ".key")}
	}
	hc.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(f.clientTLS(t, "admin")))}
	return f
}

// TestSecurityEndToEnd runs three keystored processes with TLS on the
// client port, mutual TLS between peers and an authorization policy, and
// replays each finding of the security report against them.
func TestSecurityEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin, err := harness.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"n1", "n2", "n3"}
	hc := harness.Config{Binary: bin, Dir: t.TempDir(), NoGossip: true}
	f := secureHarness(t, &hc)
	metricsAddrs := map[string]string{}
	for _, n := range names {
		if metricsAddrs[n], err = harness.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	tlsArgs := hc.NodeArgs
	hc.NodeArgs = func(n string) []string { return append(tlsArgs(n), "--metrics-addr", metricsAddrs[n]) }
	c, err := harness.Start(hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitServing(ctx); err != nil {
		t.Fatalf("a cluster over mutual TLS does not serve: %v", err)
	}
	lead := c.Leader(ctx)
	dial := func(tlsCfg *tls.Config) *grpc.ClientConn {
		creds := insecure.NewCredentials()
		if tlsCfg != nil {
			creds = credentials.NewTLS(tlsCfg)
		}
		conn, err := grpc.NewClient(c.ClientAddr(lead), grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	tlsConn := dial(f.clientTLS(t, ""))
	kv := keystorev1.NewKeyStoreServiceClient(tlsConn)
	bearer := func(token string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	code := func(err error) codes.Code { return status.Code(err) }

	t.Run("plaintext is refused on the client port", func(t *testing.T) {
		_, err := keystorev1.NewKeyStoreServiceClient(dial(nil)).Get(bearer(paymentsToken), &keystorev1.GetRequest{Namespace: "payments", Key: "k"})
		if code(err) != codes.Unavailable {
			t.Fatalf("plaintext call: %v; want UNAVAILABLE (no TLS handshake)", err)
		}
	})

	t.Run("no credential", func(t *testing.T) {
		if _, err := kv.Claim(ctx, &keystorev1.ClaimRequest{Namespace: "payments", Key: "k"}); code(err) != codes.Unauthenticated {
			t.Fatalf("Claim without a credential: %v; want UNAUTHENTICATED", err)
		}
		if _, err := kv.Claim(bearer("guessed"), &keystorev1.ClaimRequest{Namespace: "payments", Key: "k"}); code(err) != codes.Unauthenticated {
			t.Fatalf("Claim with an unknown token: %v; want UNAUTHENTICATED", err)
		}
		h, err := healthpb.NewHealthClient(tlsConn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health without a credential: %v, %v; want SERVING (probes need none)", h, err)
		}
	})

	t.Run("a token of one namespace cannot touch another", func(t *testing.T) {
		pay := bearer(paymentsToken)
		held, err := kv.Claim(pay, &keystorev1.ClaimRequest{Namespace: "payments", Key: "order-42"})
		if err != nil || held.GetOutcome() != keystorev1.ClaimOutcome_CLAIM_OUTCOME_ACQUIRED {
			t.Fatalf("payments claims in payments: %v, %v", held, err)
		}
		if _, err := kv.Complete(pay, &keystorev1.CompleteRequest{Namespace: "payments", Key: "order-42", Token: held.GetToken(), Response: &keystorev1.Response{Code: 201, Body: []byte("charged")}}); err != nil {
			t.Fatal(err)
		}
		ord := bearer(ordersToken)
		for what, err := range map[string]error{
			"Get": func() error {
				_, err := kv.Get(ord, &keystorev1.GetRequest{Namespace: "payments", Key: "order-42"})
				return err
			}(),
			"Claim": func() error {
				_, err := kv.Claim(ord, &keystorev1.ClaimRequest{Namespace: "payments", Key: "order-42"})
				return err
			}(),
			"Complete": func() error {
				_, err := kv.Complete(ord, &keystorev1.CompleteRequest{Namespace: "payments", Key: "order-42", Token: held.GetToken(), Response: &keystorev1.Response{}})
				return err
			}(),
			"Release": func() error {
				_, err := kv.Release(ord, &keystorev1.ReleaseRequest{Namespace: "payments", Key: "order-42", Token: held.GetToken()})
				return err
			}(),
			"Batch": func() error {
				resp, err := keystorev1.NewBatchServiceClient(tlsConn).Batch(ord, &keystorev1.BatchRequest{Operations: []*keystorev1.BatchOperation{
					{Operation: &keystorev1.BatchOperation_Claim{Claim: &keystorev1.ClaimRequest{Namespace: "payments", Key: "order-42"}}}}})
				if err != nil {
					return err
				}
				return status.ErrorProto(resp.GetResults()[0].GetStatus())
			}(),
		} {
			if code(err) != codes.PermissionDenied {
				t.Errorf("orders' %s in payments: %v; want PERMISSION_DENIED", what, err)
			}
		}
	})

	t.Run("live tokens only for their holder and admins", func(t *testing.T) {
		pay := bearer(paymentsToken)
		held, err := kv.Claim(pay, &keystorev1.ClaimRequest{Namespace: "payments", Key: "live"})
		if err != nil {
			t.Fatal(err)
		}
		second, err := kv.Claim(pay, &keystorev1.ClaimRequest{Namespace: "payments", Key: "live"})
		if err != nil || second.GetRecord().GetToken() != 0 || second.GetToken() != 0 {
			t.Fatalf("IN_PROGRESS answer: %v, %v; want no token", second, err)
		}
		// The forged Complete of the report: the token it can read is 0.
		if _, err := kv.Complete(pay, &keystorev1.CompleteRequest{Namespace: "payments", Key: "live", Token: second.GetRecord().GetToken(), Response: &keystorev1.Response{Body: []byte("forged")}}); err == nil {
			t.Fatal("a Complete with the token read from an IN_PROGRESS answer succeeded")
		}
		admin := keystorev1.NewKeyStoreServiceClient(dial(f.clientTLS(t, "admin")))
		got, err := admin.Get(ctx, &keystorev1.GetRequest{Namespace: "payments", Key: "live"})
		if err != nil || got.GetRecord().GetToken() != held.GetToken() {
			t.Fatalf("admin's Get: %v, %v; want the live token %d", got, err, held.GetToken())
		}
	})

	t.Run("admin calls", func(t *testing.T) {
		cs := keystorev1.NewClusterServiceClient(tlsConn)
		if _, err := cs.Status(bearer(paymentsToken), &keystorev1.StatusRequest{IncludeChecksum: true}); code(err) != codes.PermissionDenied {
			t.Errorf("Status with checksum by a non-admin: %v; want PERMISSION_DENIED", err)
		}
		if _, err := cs.Status(bearer(paymentsToken), &keystorev1.StatusRequest{}); err != nil {
			t.Errorf("Status without checksum: %v", err)
		}
		if _, err := cs.MemberRemove(bearer(paymentsToken), &keystorev1.MemberRemoveRequest{Id: "1"}); code(err) != codes.PermissionDenied {
			t.Errorf("MemberRemove by a non-admin: %v; want PERMISSION_DENIED", err)
		}
		// A backup holds every namespace's responses: admins only.
		bs, err := cs.Backup(bearer(paymentsToken), &keystorev1.BackupRequest{})
		if err == nil {
			_, err = bs.Recv()
		}
		if code(err) != codes.PermissionDenied {
			t.Errorf("Backup by a non-admin: %v; want PERMISSION_DENIED", err)
		}
		st, err := keystorev1.NewClusterServiceClient(dial(f.clientTLS(t, "admin"))).Status(ctx, &keystorev1.StatusRequest{IncludeChecksum: true})
		if err != nil || len(st.GetStateChecksum()) == 0 {
			t.Errorf("admin's Status with checksum: %v, %v", st, err)
		}
	})

	t.Run("malformed bytes and too much metadata", func(t *testing.T) {
		// Field 1 of ClaimRequest is a string: invalid UTF-8 does not decode.
		err := tlsConn.Invoke(bearer(paymentsToken), "/keystore.v1.KeyStoreService/Claim", wrapperspb.Bytes([]byte{0xff, 0xfe}), &keystorev1.ClaimResponse{})
		if code(err) != codes.InvalidArgument {
			t.Errorf("undecodable request: %v; want INVALID_ARGUMENT", err)
		}
		md := metadata.Pairs("authorization", "Bearer "+paymentsToken)
		for i := range 100 {
			md.Append("x-filler", strings.Repeat("a", i%7+1))
		}
		_, err = kv.Get(metadata.NewOutgoingContext(ctx, md), &keystorev1.GetRequest{Namespace: "payments", Key: "k"})
		if code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "max-metadata-entries") {
			t.Errorf("101 metadata entries: %v; want RESOURCE_EXHAUSTED naming --max-metadata-entries", err)
		}
	})

	t.Run("certificate expiry is exported", func(t *testing.T) {
		raw, err := os.ReadFile(f.path(lead + ".crt"))
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(raw)
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get("http://" + metricsAddrs[lead] + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, listener := range []string{"client", "peer"} {
			want := fmt.Sprintf("keystore_tls_cert_not_after_timestamp_seconds{listener=%q} %s", listener, strconv.FormatFloat(float64(cert.NotAfter.Unix()), 'g', -1, 64))
			if !strings.Contains(string(body), want+"\n") {
				t.Errorf("/metrics lacks %q", want)
			}
		}
	})

	t.Run("peer port", func(t *testing.T) {
		peerAddr := c.PeerAddr(lead)
		clusterID := raftnode.ClusterIDFor("keystore", names)
		leadID := raftnode.IDFromName(lead)
		var follower string
		for _, n := range names {
			if n != lead {
				follower = n
			}
		}
		var other string
		for _, n := range names {
			if n != lead && n != follower {
				other = n
			}
		}
		peerTLS := func(cert string) *tls.Config {
			cfg := f.clientTLS(t, cert)
			cfg.ServerName = lead
			return cfg
		}
		// A certificate of another CA, or none, fails the handshake.
		for _, cert := range []string{"stranger", ""} {
			cfg := peerTLS(cert)
			if cert == "stranger" {
				cfg.InsecureSkipVerify = true // the server's side is what is tested
			}
			conn, err := tls.Dial("tcp", peerAddr, cfg)
			if err == nil {
				_, err = conn.Write(raftnode.PeerPreamble(clusterID, raftnode.IDFromName(follower), leadID))
				if err == nil {
					_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
					_, err = conn.Read(make([]byte, 1))
				}
				conn.Close()
			}
			if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("peer connection with certificate %q: %v; want the handshake refused", cert, err)
			}
		}
		// A member's certificate claiming to be another member: closed,
		// and a higher term in it never reaches raft.
		term := c.Term(ctx)
		conn, err := tls.Dial("tcp", peerAddr, peerTLS(follower))
		if err != nil {
			t.Fatal(err)
		}
		frame, err := raftnode.PeerFrame(raftpb.Message{Type: raftpb.MsgHeartbeat, From: raftnode.IDFromName(other), To: leadID, Term: term + 100})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write(append(raftnode.PeerPreamble(clusterID, raftnode.IDFromName(other), leadID), frame...))
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && (err == nil || errors.Is(err, os.ErrDeadlineExceeded)) {
			t.Errorf("%s's certificate speaking for %s: %v; want the connection closed", follower, other, err)
		}
		conn.Close()
		if got := c.Term(ctx); got != term {
			t.Errorf("term %d after a forged sender's heartbeat; want %d", got, term)
		}
		// A forged Forward: plaintext fails, a certificate of our CA that
		// names no member is refused.
		cmd, err := proto.Marshal(&statev1.Command{Op: &statev1.Command_Claim{Claim: &statev1.Claim{
			Namespace: "payments", Key: "forged", Lease: int64(time.Minute), Retention: int64(time.Hour)}}})
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name  string
			creds credentials.TransportCredentials
			want  codes.Code
		}{
			{"plaintext", insecure.NewCredentials(), codes.Unavailable},
			{"a non-member certificate", credentials.NewTLS(peerTLS("intruder")), codes.PermissionDenied},
		} {
			pc, err := grpc.NewClient(peerAddr, grpc.WithTransportCredentials(tc.creds))
			if err != nil {
				t.Fatal(err)
			}
			_, err = peerv1.NewPeerServiceClient(pc).Forward(ctx, &peerv1.ForwardRequest{RequestId: 99, Payload: cmd, ClusterId: clusterID})
			pc.Close()
			if code(err) != tc.want {
				t.Errorf("Forward with %s: %v; want %v", tc.name, err, tc.want)
			}
		}
		if _, err := keystorev1.NewKeyStoreServiceClient(dial(f.clientTLS(t, "admin"))).Get(ctx, &keystorev1.GetRequest{Namespace: "payments", Key: "forged"}); code(err) != codes.NotFound {
			t.Errorf("the forged Forward's record: %v; want NOT_FOUND", err)
		}
	})

	// Still healthy and writing after all of it.
	if err := c.WaitServing(ctx); err != nil {
		t.Fatalf("the cluster stopped serving: %v", err)
	}
	if _, err := kv.Claim(bearer(paymentsToken), &keystorev1.ClaimRequest{Namespace: "payments", Key: "after"}); err != nil {
		t.Fatalf("a write after the attacks: %v", err)
	}
}

package tlsconf

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/keystore-dev/keystore/internal/certgen"
)

func TestLoad(t *testing.T) {
	f := newFixture(t)
	n1 := f.node(t, f.ca, "n1", "n1")
	n2 := f.node(t, f.ca, "n2", "n2")
	ca := f.path("ca.crt")
	garbage := f.path("garbage")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	bundle := f.writeCAs(t, "bundle.crt", f.ca, f.other)
	withComments := f.path("comments.crt")
	if err := os.WriteFile(withComments, append([]byte("# the cluster CA\n"), f.ca.CertPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	notAfter := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	short := f.issue(t, f.ca, "short", certgen.IssueOptions{CommonName: "s", Server: true, NotAfter: notAfter})

	tests := []struct {
		name         string
		files        Files
		wantErr      error // for errors.Is; nil with fail: any error
		fail         bool
		wantNotAfter time.Time
	}{
		{name: "node", files: Files{Cert: n1.Cert, Key: n1.Key, CA: ca}},
		{name: "server without CA", files: n1},
		{name: "pure client", files: Files{CA: ca}},
		{name: "CA bundle", files: Files{CA: bundle}},
		{name: "CA with comments", files: Files{CA: withComments}},
		{name: "not after", files: short, wantNotAfter: notAfter},
		{name: "nothing", files: Files{}, fail: true, wantErr: ErrNoFiles},
		{name: "cert without key", files: Files{Cert: n1.Cert, CA: ca}, fail: true},
		{name: "key without cert", files: Files{Key: n1.Key, CA: ca}, fail: true},
		{name: "mismatched key", files: Files{Cert: n1.Cert, Key: n2.Key}, fail: true},
		{name: "missing cert", files: Files{Cert: f.path("nope.crt"), Key: n1.Key}, fail: true, wantErr: os.ErrNotExist},
		{name: "missing CA", files: Files{CA: f.path("nope.crt")}, fail: true, wantErr: os.ErrNotExist},
		{name: "garbage CA", files: Files{CA: garbage}, fail: true},
		{name: "key as CA", files: Files{CA: n1.Key}, fail: true},
		{name: "garbage cert", files: Files{Cert: garbage, Key: n1.Key}, fail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Load(tt.files, nil)
			if tt.fail {
				if err == nil {
					t.Fatal("Load: got nil error")
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("Load: got %v; want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			got := s.NotAfter()
			switch {
			case tt.files.Cert == "" && !got.IsZero():
				t.Errorf("NotAfter = %s; want zero without a certificate", got)
			case !tt.wantNotAfter.IsZero() && !got.Equal(tt.wantNotAfter):
				t.Errorf("NotAfter = %s; want %s", got, tt.wantNotAfter)
			}
		})
	}
}

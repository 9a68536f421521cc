package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/keystore-dev/keystore/internal/certgen"
)

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		// The flag package has printed the usage.
	case err != nil:
		fmt.Fprintln(os.Stderr, "gencerts:", err)
		os.Exit(1)
	}
}

// run parses args, writes the files and reports each one on stdout.
func run(args []string, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("gencerts", flag.ContinueOnError)
	fset.SetOutput(stderr)
	out := fset.String("out", "", "directory to write the files to (required)")
	nodes := fset.String("nodes", "", "comma-separated node names (required)")
	clients := fset.String("clients", "", "comma-separated client names")
	hosts := fset.String("hosts", "localhost,127.0.0.1", "comma-separated extra DNS names and IPs for every node certificate")
	force := fset.Bool("force", false, "overwrite an existing DIR/ca.crt and everything else")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if fset.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fset.Args())
	}
	if *out == "" {
		return errors.New("-out is required")
	}
	nodeNames := split(*nodes)
	clientNames := split(*clients)
	if len(nodeNames) == 0 {
		return errors.New("-nodes is required")
	}
	if err := checkNames(nodeNames, clientNames); err != nil {
		return err
	}
	hostNames, hostIPs := splitHosts(split(*hosts))

	caPath := filepath.Join(*out, "ca.crt")
	if _, err := os.Stat(caPath); err == nil && !*force {
		return fmt.Errorf("%s exists; use -force to replace the CA and every certificate", caPath)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}

	ca, err := certgen.NewCA("keystore CA")
	if err != nil {
		return err
	}
	stranger, err := certgen.NewCA("keystore stranger CA")
	if err != nil {
		return err
	}
	if err := writeCA(stdout, ca, caPath); err != nil {
		return err
	}
	for _, n := range nodeNames {
		if err := writeNode(stdout, ca, *out, n, n, hostNames, hostIPs); err != nil {
			return err
		}
	}
	for _, c := range clientNames {
		leaf, err := ca.Issue(certgen.IssueOptions{CommonName: c, Client: true})
		if err != nil {
			return err
		}
		if err := writeLeaf(stdout, *out, "client-"+c, leaf, "client "+c); err != nil {
			return err
		}
	}
	if err := writeCA(stdout, stranger, filepath.Join(*out, "stranger-ca.crt")); err != nil {
		return err
	}
	return writeNode(stdout, stranger, *out, "stranger", nodeNames[0], hostNames, hostIPs)
}

// writeNode issues a node certificate named node (CN and first DNS SAN) with
// the extra hosts, for both server and client use, and writes it as file.
func writeNode(w io.Writer, ca *certgen.CA, dir, file, node string, hostNames []string, hostIPs []net.IP) error {
	dns := []string{node}
	for _, h := range hostNames {
		if h != node {
			dns = append(dns, h)
		}
	}
	leaf, err := ca.Issue(certgen.IssueOptions{CommonName: node, DNSNames: dns, IPs: hostIPs, Server: true, Client: true})
	if err != nil {
		return err
	}
	what := fmt.Sprintf("node %s (DNS %s", node, strings.Join(dns, ","))
	if len(hostIPs) > 0 {
		ips := make([]string, len(hostIPs))
		for i, ip := range hostIPs {
			ips[i] = ip.String()
		}
		what += "; IP " + strings.Join(ips, ",")
	}
	what += "; signed by " + ca.Cert.Subject.CommonName + ")"
	return writeLeaf(w, dir, file, leaf, what)
}

// writeLeaf writes leaf as dir/name.crt and .key and reports them.
func writeLeaf(w io.Writer, dir, name string, leaf *certgen.Leaf, what string) error {
	certPath, keyPath, err := certgen.WriteFiles(dir, name, leaf)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "wrote %s, %s: %s\n", certPath, keyPath, what)
	return nil
}

// writeCA writes the certificate of ca to path and reports it.
func writeCA(w io.Writer, ca *certgen.CA, path string) error {
	if err := ca.WriteFile(path); err != nil {
		return err
	}
	fmt.Fprintf(w, "wrote %s: CA %q\n", path, ca.Cert.Subject.CommonName)
	return nil
}

// split returns the non-empty, trimmed elements of a comma-separated list.
func split(list string) []string {
	var out []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// splitHosts separates IP literals from DNS names, dropping duplicates.
func splitHosts(hosts []string) (names []string, ips []net.IP) {
	seen := make(map[string]bool)
	for _, h := range hosts {
		if seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			names = append(names, h)
		}
	}
	return names, ips
}

// checkNames refuses names that are not plain file names, that are IP
// literals, or whose files would collide with each other or with the CA and
// stranger files.
func checkNames(nodes, clients []string) error {
	files := map[string]string{"ca": "the CA", "stranger": "the stranger", "stranger-ca": "the stranger CA"}
	claim := func(file, what string) error {
		if prev, ok := files[file]; ok {
			return fmt.Errorf("%s would overwrite the files of %s", what, prev)
		}
		files[file] = what
		return nil
	}
	for _, n := range nodes {
		if err := checkName(n); err != nil {
			return fmt.Errorf("node %w", err)
		}
		if err := claim(n, "node "+n); err != nil {
			return err
		}
	}
	for _, c := range clients {
		if err := checkName(c); err != nil {
			return fmt.Errorf("client %w", err)
		}
		if err := claim("client-"+c, "client "+c); err != nil {
			return err
		}
	}
	return nil
}

// checkName refuses a name unfit for a file name or a certificate's CN.
func checkName(name string) error {
	if strings.HasPrefix(name, ".") || strings.ContainsAny(name, `/\ `) || net.ParseIP(name) != nil {
		return fmt.Errorf("name %q: want a plain name (no dot first, no slash or space, not an IP)", name)
	}
	return nil
}

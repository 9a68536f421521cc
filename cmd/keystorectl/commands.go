package main

import (
	"encoding/hex"
	"flag"
	"fmt"
	"github.com/keystore-dev/keystore/version"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/keystore-dev/keystore/client"
)

// command is one subcommand. setup registers its flags on fs and returns
// the action to run once they are parsed; the action checks them first and
// reports mistakes as usageErrors, before it dials anything. A name of two
// words ("member add") is a subcommand of a group.
type command struct {
	name     string
	synopsis string
	summary  string
	setup    func(fs *flag.FlagSet) func(e *env) error
	// args name the positional arguments, all required (env.args).
	args []string
	// details, when set, follow the summary in the command's help.
	details string
}

var commands = []command{
	{name: "claim", synopsis: "--namespace NS --key KEY [--fingerprint S | --fingerprint-hex H] [--lease D] [--retention D] [--wait D] [--owner S]",
		summary: "Claim a key: ACQUIRED (with the token), IN_PROGRESS, or COMPLETED (with the stored response).", setup: setupClaim},
	{name: "complete", synopsis: "--namespace NS --key KEY --token N [--code N] [--body S | --body-file PATH] [--header K=V]... [--retention D]",
		summary: "Store the response of a claimed operation; every later claim replays it.", setup: setupComplete},
	{name: "release", synopsis: "--namespace NS --key KEY --token N",
		summary: "Give up a claim after a retryable failure, so the next claim acquires.", setup: setupRelease},
	{name: "heartbeat", synopsis: "--namespace NS --key KEY --token N [--lease D]",
		summary: "Extend a claim's lease.", setup: setupHeartbeat},
	{name: "get", synopsis: "--namespace NS --key KEY [--stale]",
		summary: "Read a record (linearizable unless --stale).", setup: setupGet},
	{name: "status", synopsis: "",
		summary: "Show each endpoint's view of the cluster: name, leader, term, commit and applied index, stored records, serving.", setup: setupStatus},
	{name: "version", synopsis: "",
		summary: "Show keystorectl's version and each endpoint's keystored version.", setup: setupVersion},
	endpointHealthCommand,
	memberListCommand,
	memberAddCommand,
	memberPromoteCommand,
	memberRemoveCommand,
	snapshotSaveCommand,
	snapshotStatusCommand,
}

// lookup finds the command that args start with and returns the args
// after its name; the error, a usageError, says what is wrong.
func lookup(args []string) (command, []string, error) {
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			return c, args[len(words):], nil
		}
	}
	if len(args) == 0 {
		return command{}, nil, usageErrorf("no command given")
	}
	if group := groupOf(args[0]); group != nil {
		var names []string
		for _, c := range group {
			names = append(names, strings.TrimPrefix(c.name, args[0]+" "))
		}
		if len(args) == 1 {
			return command{}, nil, usageErrorf("%s needs a command: %s", args[0], strings.Join(names, ", "))
		}
		return command{}, nil, usageErrorf("unknown command %q (%s has %s)", args[0]+" "+args[1], args[0], strings.Join(names, ", "))
	}
	return command{}, nil, usageErrorf("unknown command %q", args[0])
}

// groupOf returns the commands of group name ("member"), or nil when name
// is no group.
func groupOf(name string) []command {
	var out []command
	for _, c := range commands {
		if strings.HasPrefix(c.name, name+" ") {
			out = append(out, c)
		}
	}
	return out
}

// keyFlags are the flags that name a record.
type keyFlags struct{ namespace, key string }

func (k *keyFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&k.namespace, "namespace", "", "the key's namespace: 1-64 chars of [a-z0-9._-] (required)")
	fs.StringVar(&k.key, "key", "", "the idempotency key (required)")
}

func (k *keyFlags) validate() error {
	switch {
	case k.namespace == "":
		return usageErrorf("--namespace is required")
	case k.key == "":
		return usageErrorf("--key is required")
	}
	return nil
}

func tokenFlag(fs *flag.FlagSet) *uint64 {
	return fs.Uint64("token", 0, "the fencing token the claim returned (required)")
}

func requireToken(token uint64) error {
	if token == 0 {
		return usageErrorf("--token is required (the token claim returned)")
	}
	return nil
}

// isSet reports whether the flag name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func defaultOwner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		return "keystorectl"
	}
	return "keystorectl@" + host
}

func setupClaim(fs *flag.FlagSet) func(e *env) error {
	var k keyFlags
	k.register(fs)
	fp := fs.String("fingerprint", "", "the request's fingerprint, as the bytes of this string (at most 64)")
	fpHex := fs.String("fingerprint-hex", "", "the request's fingerprint in hex")
	lease := fs.Duration("lease", 0, "how long the claim is held (default: the server's, 30s)")
	retention := fs.Duration("retention", 0, "how long the record lives (default: the server's, 24h)")
	wait := fs.Duration("wait", 0, "how long to wait for another caller's live claim to resolve")
	owner := fs.String("owner", defaultOwner(), "free text naming the holder")
	return func(e *env) error {
		if err := k.validate(); err != nil {
			return err
		}
		if *lease < 0 || *retention < 0 || *wait < 0 {
			return usageErrorf("--lease, --retention and --wait must not be negative")
		}
		fingerprint := []byte(*fp)
		if isSet(fs, "fingerprint-hex") {
			if isSet(fs, "fingerprint") {
				return usageErrorf("give --fingerprint or --fingerprint-hex, not both")
			}
			b, err := hex.DecodeString(*fpHex)
			if err != nil {
				return usageErrorf("--fingerprint-hex: %v", err)
			}
			fingerprint = b
		}
		c, err := e.dial(false)
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := e.call(*wait)
		defer cancel()
		res, err := c.Claim(ctx, client.ClaimRequest{
			Namespace: k.namespace, Key: k.key, Fingerprint: fingerprint,
			Lease: *lease, Retention: *retention, Wait: *wait, Owner: *owner,
		})
		if err != nil {
			return err
		}
		return e.out.claim(res)
	}
}

// headerFlags collects repeated --header k=v.
type headerFlags map[string]string

func (h headerFlags) String() string {
	keys := make([]string, 0, len(h))
	for k, v := range h {
		keys = append(keys, k+"="+v)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

func (h headerFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", s)
	}
	if _, dup := h[k]; dup {
		return fmt.Errorf("%q given twice", k)
	}
	h[k] = v
	return nil
}

func setupComplete(fs *flag.FlagSet) func(e *env) error {
	var k keyFlags
	k.register(fs)
	token := tokenFlag(fs)
	code := fs.Int("code", 200, "the response's code (an HTTP status or a gRPC code)")
	body := fs.String("body", "", "the response body")
	bodyFile := fs.String("body-file", "", "read the response body from this `path` (/dev/stdin for standard input)")
	headers := headerFlags{}
	fs.Var(headers, "header", "a response header or metadata entry as `key=value` (repeatable)")
	retention := fs.Duration("retention", 0, "how long the record lives from now (default: the retention given at claim)")
	return func(e *env) error {
		if err := k.validate(); err != nil {
			return err
		}
		if err := requireToken(*token); err != nil {
			return err
		}
		if isSet(fs, "body") && isSet(fs, "body-file") {
			return usageErrorf("give --body or --body-file, not both")
		}
		if *code < -1<<31 || *code > 1<<31-1 {
			return usageErrorf("--code %d does not fit in 32 bits", *code)
		}
		if *retention < 0 {
			return usageErrorf("--retention must not be negative")
		}
		payload := []byte(*body)
		if *bodyFile != "" {
			b, err := os.ReadFile(*bodyFile)
			if err != nil {
				return fmt.Errorf("--body-file: %w", err)
			}
			payload = b
		}
		c, err := e.dial(false)
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := e.call(0)
		defer cancel()
		var md map[string]string
		if len(headers) > 0 {
			md = headers
		}
		rec, err := c.Complete(ctx, client.CompleteRequest{
			Namespace: k.namespace, Key: k.key, Token: *token,
			Response:  client.Response{Code: int32(*code), Metadata: md, Body: payload},
			Retention: *retention,
		})
		if err != nil {
			return err
		}
		return e.out.record(rec)
	}
}

func setupRelease(fs *flag.FlagSet) func(e *env) error {
	var k keyFlags
	k.register(fs)
	token := tokenFlag(fs)
	return func(e *env) error {
		if err := k.validate(); err != nil {
			return err
		}
		if err := requireToken(*token); err != nil {
			return err
		}
		c, err := e.dial(false)
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := e.call(0)
		defer cancel()
		if err := c.Release(ctx, k.namespace, k.key, *token); err != nil {
			return err
		}
		return e.out.released(k.namespace, k.key, *token)
	}
}

func setupHeartbeat(fs *flag.FlagSet) func(e *env) error {
	var k keyFlags
	k.register(fs)
	token := tokenFlag(fs)
	lease := fs.Duration("lease", 0, "the new lease, from now (default: the server's, 30s)")
	return func(e *env) error {
		if err := k.validate(); err != nil {
			return err
		}
		if err := requireToken(*token); err != nil {
			return err
		}
		if *lease < 0 {
			return usageErrorf("--lease must not be negative")
		}
		c, err := e.dial(false)
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := e.call(0)
		defer cancel()
		rec, err := c.Heartbeat(ctx, k.namespace, k.key, *token, *lease)
		if err != nil {
			return err
		}
		return e.out.record(rec)
	}
}

func setupGet(fs *flag.FlagSet) func(e *env) error {
	var k keyFlags
	k.register(fs)
	stale := fs.Bool("stale", false, "read from whichever node answers, possibly stale")
	return func(e *env) error {
		if err := k.validate(); err != nil {
			return err
		}
		c, err := e.dial(false)
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := e.call(0)
		defer cancel()
		get := c.Get
		if *stale {
			get = c.GetStale
		}
		rec, err := get(ctx, k.namespace, k.key)
		if err != nil {
			return err
		}
		return e.out.record(rec)
	}
}

// setupStatus asks every endpoint. It fails (exit 1) only when none
// answered: a row per endpoint shows who did not and why. It asks exactly
// --endpoints (no discovery), so that its rows do not depend on how soon
// the client learns the members.
func setupStatus(fs *flag.FlagSet) func(e *env) error {
	return func(e *env) error {
		return e.eachStatus(func(nodes []client.NodeStatus) error { return e.out.status(nodes) })
	}
}

// eachStatus asks every endpoint (exactly --endpoints) for its status and
// hands the answers to show; it fails as unreachable when none answered.
func (e *env) eachStatus(show func([]client.NodeStatus) error) error {
	c, err := e.dial(true)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := e.call(0)
	defer cancel()
	nodes := c.Status(ctx)
	if err := show(nodes); err != nil {
		return err
	}
	for _, n := range nodes {
		if n.Err == nil {
			return nil
		}
	}
	return unreachable(fmt.Errorf("no endpoint answered (%d tried; each row says why)", len(nodes)))
}

// setupVersion prints keystorectl's version, then asks every endpoint for
// its own; it fails (exit 1) only when none answered.
func setupVersion(fs *flag.FlagSet) func(e *env) error {
	return func(e *env) error {
		return e.eachStatus(func(nodes []client.NodeStatus) error { return e.out.versions(version.Get().String(), nodes) })
	}
}

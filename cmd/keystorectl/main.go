package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/keystore-dev/keystore/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit statuses.
const (
	exitOK          = 0
	exitError       = 1 // keystore said no: a refusal of the call, or a node not serving
	exitUsage       = 2 // the command line is wrong
	exitUnreachable = 3 // no answer: the cluster could not be reached, or no quorum answered in time
)

const defaultEndpoints = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// globals are the flags every command takes.
type globals struct {
	endpoints   string
	output      string
	timeout     time.Duration
	noDiscovery bool
	security    securityFlags // credentials.go
}

// endpointsEnv names the endpoints when --endpoints does not.
const endpointsEnv = "KEYSTORECTL_ENDPOINTS"

func defaultGlobals() globals {
	eps := defaultEndpoints
	if v := os.Getenv(endpointsEnv); v != "" {
		eps = v
	}
	return globals{endpoints: eps, output: "text", timeout: 10 * time.Second}
}

// register adds the global flags to fs, defaulting to their current values
// so that a flag given before the command survives the command's parse.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.endpoints, "endpoints", g.endpoints, "the nodes to call, comma-separated `host:port,...`")
	fs.StringVar(&g.output, "o", g.output, "output `format`: text or json")
	fs.StringVar(&g.output, "output", g.output, "same as -o")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "bound on the whole call (a claim's --wait is added)")
	fs.BoolVar(&g.noDiscovery, "no-discovery", g.noDiscovery, "call only --endpoints, not also the client addresses the members publish")
	g.security.register(fs)
}

func (g *globals) validate() error {
	switch {
	case g.output != "text" && g.output != "json":
		return usageErrorf("-o: %q is not text or json", g.output)
	case g.timeout <= 0:
		return usageErrorf("--timeout must be positive")
	}
	if len(g.endpointList()) == 0 {
		return usageErrorf("--endpoints: no endpoint given")
	}
	return g.security.validate()
}

func (g *globals) endpointList() []string {
	var out []string
	for _, ep := range strings.Split(g.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			out = append(out, ep)
		}
	}
	return out
}

// env is what a command runs with once its flags are parsed and valid.
type env struct {
	g    globals
	out  *printer
	args []string // the positional arguments, as many as the command names
}

// call returns the context of one call: --timeout plus extra.
func (e *env) call(extra time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), e.g.timeout+extra)
}

// dial connects to the endpoints; the caller must Close the client. Unless
// --no-discovery (or noDiscovery, for a command that must call exactly
// --endpoints), the client also learns the members' client addresses in
// the background, as client.Config describes: a call that outlives the
// first answer (a claim's --wait, retries) may fail over to them.
func (e *env) dial(noDiscovery bool) (*client.Client, error) {
	cred, err := e.g.security.load()
	if err != nil {
		return nil, err
	}
	return client.New(context.Background(), client.Config{
		Endpoints: e.g.endpointList(),
		// One stuck node must not eat the whole --timeout.
		AttemptTimeout: min(6*time.Second, e.g.timeout),
		NoDiscovery:    noDiscovery || e.g.noDiscovery,
		TLS:            cred.tls,
		Token:          cred.token,
		InsecureToken:  e.g.security.insecureToken,
	})
}

// usageError is a command-line mistake: exit 2 with the usage.
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// run is keystorectl with args (without the program name); it returns the
// exit status.
func run(args []string, stdout, stderr io.Writer) int {
	g := defaultGlobals()
	top := flag.NewFlagSet("keystorectl", flag.ContinueOnError)
	top.SetOutput(stderr)
	top.Usage = func() {}
	g.register(top)
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, top)
			return exitOK
		}
		printUsage(stderr, top)
		return exitUsage
	}
	if top.NArg() == 0 {
		fmt.Fprintln(stderr, "keystorectl: no command given")
		printUsage(stderr, top)
		return exitUsage
	}
	if top.Arg(0) == "help" {
		return help(top.Args()[1:], stdout, stderr, top)
	}
	cmd, rest, err := lookup(top.Args())
	if err != nil {
		if group := groupOf(top.Arg(0)); group != nil && len(top.Args()) > 1 && isHelpFlag(top.Arg(1)) {
			printGroupUsage(stdout, top.Arg(0), group)
			return exitOK
		}
		fmt.Fprintf(stderr, "keystorectl: %v\n", err)
		printUsage(stderr, top)
		return exitUsage
	}

	fs := flag.NewFlagSet("keystorectl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	g.register(fs)
	act := cmd.setup(fs)
	pos, err := parseArgs(fs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printCommandUsage(stdout, cmd, fs)
			return exitOK
		}
		printCommandUsage(stderr, cmd, fs)
		return exitUsage
	}
	err = g.validate()
	switch {
	case err != nil:
	case len(pos) > len(cmd.args):
		err = usageErrorf("unexpected argument %q", pos[len(cmd.args)])
	case len(pos) < len(cmd.args):
		err = usageErrorf("%s is required", cmd.args[len(pos)])
	}
	if err == nil {
		err = act(&env{g: g, out: &printer{w: stdout, json: g.output == "json"}, args: pos})
	}
	var uerr usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &uerr):
		fmt.Fprintf(stderr, "keystorectl %s: %s\n", cmd.name, uerr.msg)
		printCommandUsage(stderr, cmd, fs)
		return exitUsage
	default:
		msg := describe(err)
		if errors.Is(err, context.DeadlineExceeded) {
			msg += fmt.Sprintf(" (--timeout %s)", g.timeout)
		}
		if status.Code(err) == codes.Unauthenticated && !g.security.hasCredential() {
			msg += " (no credential given: " + credentialHint + ")"
		}
		fmt.Fprintf(stderr, "keystorectl %s: %s\n", cmd.name, msg)
		if isUnreachable(err) {
			return exitUnreachable
		}
		return exitError
	}
}

func help(topics []string, stdout, stderr io.Writer, top *flag.FlagSet) int {
	if len(topics) == 0 {
		printUsage(stdout, top)
		return exitOK
	}
	if group := groupOf(topics[0]); group != nil && len(topics) == 1 {
		printGroupUsage(stdout, topics[0], group)
		return exitOK
	}
	cmd, _, err := lookup(topics)
	if err != nil {
		fmt.Fprintf(stderr, "keystorectl help: %v\n", err)
		printUsage(stderr, top)
		return exitUsage
	}
	fs := flag.NewFlagSet("keystorectl "+cmd.name, flag.ContinueOnError)
	g := defaultGlobals()
	g.register(fs)
	cmd.setup(fs)
	printCommandUsage(stdout, cmd, fs)
	return exitOK
}

// parseArgs parses fs's flags wherever they stand among the positional
// arguments ("member add n4 --peer-addr A" as well as "member add
// --peer-addr A n4"), which it returns; all after "--" are positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func isHelpFlag(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "--h":
		return true
	}
	return false
}

func printUsage(w io.Writer, top *flag.FlagSet) {
	fmt.Fprint(w, "Usage: keystorectl [global flags] <command> [arguments] [flags]\n\nCommands:\n")
	listCommands(w, commands)
	fmt.Fprint(w, "\nGlobal flags (before or after the command):\n")
	printDefaults(w, top)
	fmt.Fprint(w, "\n"+securityUsage)
	fmt.Fprint(w, "\nRun 'keystorectl help <command>' for a command's arguments and flags.\n"+
		"Exit status: 0 success, 1 keystore or network error, 2 usage error.\n")
}

// printGroupUsage lists the subcommands of a group such as member.
func printGroupUsage(w io.Writer, group string, cmds []command) {
	fmt.Fprintf(w, "Usage: keystorectl %s <command> [arguments] [flags]\n\nCommands:\n", group)
	listCommands(w, cmds)
	fmt.Fprintf(w, "\nRun 'keystorectl help %s <command>' for a command's arguments and flags.\n", group)
}

func listCommands(w io.Writer, cmds []command) {
	width := 0
	for _, c := range cmds {
		width = max(width, len(c.name))
	}
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-*s %s\n", width, c.name, c.summary)
	}
}

func printCommandUsage(w io.Writer, c command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: keystorectl %s %s\n\n%s\n", c.name, c.synopsis, c.summary)
	if c.details != "" {
		fmt.Fprintf(w, "\n%s\n", c.details)
	}
	fmt.Fprint(w, "\nFlags:\n")
	printDefaults(w, fs)
}

func printDefaults(w io.Writer, fs *flag.FlagSet) {
	prev := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(prev)
}

// isUnreachable tells a failure to reach the cluster (no node answered, no
// quorum in time) from an answer that said no.
func isUnreachable(err error) bool {
	return errors.Is(err, errUnreachable) || errors.Is(err, client.ErrUnavailable) ||
		errors.Is(err, context.DeadlineExceeded) ||
		status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded
}

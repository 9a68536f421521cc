package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/keystore-dev/keystore/server"
	"go.yaml.in/yaml/v3"
)

// restoreUsage is keystored restore's help.
const restoreUsage = `Usage: keystored restore [--data-dir DIR] [--name NAME] FILE

Make DIR the data dir of the first node of a NEW cluster holding the state of
the backup FILE (keystorectl snapshot save): the records at the backup's
index, their log time, and this node as the only member, a voter. The new
cluster gets a new cluster id and this node a new id, so it can never talk to
the cluster that was backed up. DIR must not exist or be empty; FILE is checked
whole (SHA-256, the state's framing and CRC) before anything is installed.

Then start the node as usual, with the same --data-dir and --name:
  keystored --data-dir DIR --name NAME --client-addr ... --peer-addr ...
It serves alone at once; add the others with empty data dirs and --join
(docs/backup.md). A backup holds no membership, identities, TLS keys,
authorization policy or configuration: give the new nodes their own.

--data-dir and --name also come from KEYSTORE_DATA_DIR and KEYSTORE_NAME, or
the --config file, as for keystored itself; the file's other keys are ignored.

Flags:
`

// runRestore is keystored restore: args are its flags and the backup file.
func runRestore(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keystored restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, restoreUsage)
		fs.PrintDefaults()
	}
	dataDir := fs.String("data-dir", "keystore-data", "the new node's data directory: must not exist or be empty")
	name := fs.String("name", "n1", "the new node's name: start it with the same --name")
	fs.String("config", "", "a YAML file of keystored's flag values; restore takes data-dir and name from it")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
	// Flags may follow the file, as in "restore FILE --data-dir DIR".
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(pos) != 1 {
		fs.Usage()
		return fmt.Errorf("restore: want one backup file; got %d arguments", len(pos))
	}
	if err := applyRestoreConfig(fs, os.Getenv); err != nil {
		return err
	}
	logger, err := newLogger(*logLevel, "text")
	if err != nil {
		return err
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	res, err := server.Restore(server.RestoreConfig{DataDir: *dataDir, Name: *name, Logger: logger}, f)
	if err != nil {
		return fmt.Errorf("restore %s: %w", pos[0], err)
	}
	dir, _ := filepath.Abs(*dataDir)
	h := res.Header
	fmt.Fprintf(stdout, "restored %s into %s\n", pos[0], dir)
	fmt.Fprintf(stdout, "  backup:      index %d, term %d, %d records, log time %s, cluster %x, taken on %s at %s\n",
		h.Index, h.Term, res.Records, h.LogTime.Format("2006-01-02T15:04:05Z07:00"), h.ClusterID, h.NodeName, h.CreatedAt.Format("2006-01-02T15:04:05Z07:00"))
	fmt.Fprintf(stdout, "  new cluster: %x, this node %q with id %x, the only member (a voter)\n", res.ClusterID, *name, res.NodeID)
	fmt.Fprintf(stdout, "start it with: keystored --data-dir %s --name %s [--client-addr ... --peer-addr ...]\n", *dataDir, *name)
	fmt.Fprintf(stdout, "then join the others to it with empty data dirs and --join (docs/backup.md)\n")
	return nil
}

// applyRestoreConfig fills restore's flags that the command line did not
// set from the environment (KEYSTORE_DATA_DIR, ...) and then from the
// --config file, as applyConfig does for keystored; the file's keys that
// restore does not take (the ones of a running node) are ignored, so the
// node's own file serves.
func applyRestoreConfig(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || set[f.Name] {
			return
		}
		if v, ok := lookupEnv(getenv, envName(f.Name)); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s: %v", envName(f.Name), serr)
				return
			}
			set[f.Name] = true
		}
	})
	if err != nil {
		return err
	}
	path := fs.Lookup("config").Value.String()
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == "config" || set[name] || fs.Lookup(name) == nil {
			continue
		}
		if err := fs.Set(name, configValue(m[name])); err != nil {
			return fmt.Errorf("--config %s: %s: %v", path, name, err)
		}
	}
	return nil
}

// isRestore reports whether keystored's arguments ask for restore.
func isRestore(args []string) bool {
	return len(args) > 0 && args[0] == "restore"
}

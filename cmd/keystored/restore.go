package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/keystore-dev/keystore/server"
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
	// The node's own --config file serves: keys restore does not take
	// are ignored.
	if err := applyConfig(fs, os.Getenv, false); err != nil {
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

// isRestore reports whether keystored's arguments ask for restore.
func isRestore(args []string) bool {
	return len(args) > 0 && args[0] == "restore"
}

package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Configuration. Every flag can also come from the environment and from a
// YAML file; the first of these that sets a flag wins:
//
//  1. the command line (--data-dir /var/lib/keystore);
//  2. the environment: KEYSTORE_ and the flag's name in capitals with
//     dashes as underscores (KEYSTORE_DATA_DIR=/var/lib/keystore);
//  3. the file named by --config (or KEYSTORE_CONFIG): a map from flag
//     names to values (data-dir: /var/lib/keystore; a list becomes the
//     comma-separated value of a list flag such as join);
//  4. the flag's default.
//
// An unknown name in the file, or a value a flag refuses, is an error that
// says where it came from.

// envName is the environment variable of flag name.
func envName(name string) string {
	return "KEYSTORE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applyConfig fills the flags of fs that the command line did not set,
// from the environment (getenv) and then from the config file. strict
// refuses a key of the file that names no flag of fs; otherwise such keys
// are ignored (keystored restore reads a node's file, most of whose keys
// it does not take).
func applyConfig(fs *flag.FlagSet, getenv func(string) string, strict bool) error {
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
		if name == "config" || fs.Lookup(name) == nil {
			if !strict {
				continue
			}
			return fmt.Errorf("--config %s: %q is not a keystored flag", path, name)
		}
		if set[name] {
			continue
		}
		if err := fs.Set(name, configValue(m[name])); err != nil {
			return fmt.Errorf("--config %s: %s: %v", path, name, err)
		}
	}
	return nil
}

// lookupEnv is getenv that tells an empty variable from an unset one
// (getenv returns "" for both; an empty value sets nothing).
func lookupEnv(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

// configValue is the flag value of a YAML value: lists joined by commas,
// maps as name=value pairs (initial-cluster: {n1: "host:7101"}).
func configValue(v any) string {
	switch v := v.(type) {
	case []any:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = configValue(x)
		}
		return strings.Join(parts, ",")
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + configValue(v[k])
		}
		return strings.Join(parts, ",")
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

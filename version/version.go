// Package version says which keystore a binary is: the module version and
// the commit it was built from, read from the Go build information (or, for
// the commit, from -ldflags when the build had no VCS stamp). keystored
// --version, keystorectl version, ClusterService.Status and the
// keystore_build_info metric all report it.
package version

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// commit, when set at link time (make build:
// -ldflags "-X github.com/keystore-dev/keystore/version.commit=..."), is
// the commit the binary was built from.
var commit string

// Info is a binary's version.
type Info struct {
	// Version is the main module's version: a release tag, a
	// pseudo-version, or "(devel)" for a build from a working tree.
	Version string
	// Commit is the VCS revision ("unknown" without one), Modified
	// whether the working tree had changes.
	Commit   string
	Modified bool
	// GoVersion is the toolchain that built the binary.
	GoVersion string
}

// Get returns this binary's Info.
func Get() Info {
	info := Info{Version: "(devel)", Commit: "unknown", GoVersion: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		if bi.Main.Version != "" {
			info.Version = bi.Main.Version
		}
		info.GoVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Commit = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	if c := strings.TrimSpace(commit); c != "" {
		info.Commit, info.Modified = strings.TrimSuffix(c, "-dirty"), strings.HasSuffix(c, "-dirty")
	}
	return info
}

// String is the one-line form: "keystore (devel) commit 1a2b3c4d (modified), go1.26.8".
func (i Info) String() string {
	c := i.Commit
	if len(c) > 12 {
		c = c[:12]
	}
	if i.Modified {
		c += " (modified)"
	}
	return fmt.Sprintf("keystore %s commit %s, %s", i.Version, c, i.GoVersion)
}

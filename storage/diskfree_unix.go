//go:build unix

package storage

import "golang.org/x/sys/unix"

// fsSpace returns the free (available to this user) and total bytes of
// the filesystem holding dir; zeros if it cannot tell.
func fsSpace(dir string) (free, total uint64) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize)
}

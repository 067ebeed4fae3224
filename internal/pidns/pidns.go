// Package pidns marks a directory named after a master's pid with the pid
// namespace that pid belongs to. A master removes the directories of
// masters that are gone (killed with SIGKILL, they never cleaned up), and
// tells them by their pid not running; but a pid means something only in
// its own namespace: a master in a container that shares /run with the
// host would take every host master for dead. Only a directory marked
// with the sweeper's own namespace is judged by its pid.
package pidns

import (
	"os"
	"path/filepath"
)

// markFile, in a marked directory, names its master's pid namespace.
const markFile = ".pidns"

// Own identifies this process's pid namespace as /proc/self/ns/pid names
// it ("pid:[4026531836]"); "unknown" when that cannot be read.
func Own() string {
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return "unknown"
	}
	return ns
}

// Mark records this process's pid namespace in dir, readable by its owner
// alone.
func Mark(dir string) error {
	return os.WriteFile(filepath.Join(dir, markFile), []byte(Own()), 0o600)
}

// Ours reports whether dir was marked by a master of this pid namespace.
func Ours(dir string) bool {
	ns, err := os.ReadFile(filepath.Join(dir, markFile))
	return err == nil && string(ns) == Own()
}

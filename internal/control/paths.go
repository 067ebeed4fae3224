package control

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultPath is where the control socket is when none is configured:
// beside the pidfile (baton.pid -> baton.sock), else in $XDG_RUNTIME_DIR,
// else /run for root, else the temp dir with the uid in the name. The
// master and the CLI use the same rule, so `baton reload --pid FILE` finds a
// master started with `--pid FILE`.
func DefaultPath(pidfile string) string {
	if pidfile != "" {
		return strings.TrimSuffix(pidfile, filepath.Ext(pidfile)) + ".sock"
	}
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "baton.sock")
	}
	if os.Getuid() == 0 {
		return "/run/baton.sock"
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("baton-%d.sock", os.Getuid()))
}

package master

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/baton-pm/baton/internal/pidns"
)

// The fork-server directories of dead masters of this pid namespace are
// removed; those of live masters, of masters in another pid namespace (a
// container sharing /run) and unmarked ones stay.
func TestStaleForkServerDirectoriesOfThisNamespaceAreRemoved(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	mk := func(name string, mark string) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		switch mark {
		case "ours":
			if err := pidns.Mark(p); err != nil {
				t.Fatal(err)
			}
		case "other":
			os.WriteFile(filepath.Join(p, ".pidns"), []byte("pid:[1]"), 0o600)
		}
		return p
	}
	gone := mk(fmt.Sprintf("baton-forkserver-%d", dead.Process.Pid), "ours")
	kept := []string{
		mk(fmt.Sprintf("baton-forkserver-%d", os.Getppid()), "ours"), // alive
		mk(fmt.Sprintf("baton-forkserver-%d", dead.Process.Pid+1000000), "other"),
		mk(fmt.Sprintf("baton-forkserver-%d", dead.Process.Pid+2000000), ""), // unmarked
		mk("baton-forkserver-x", "ours"),
	}
	removeStaleForkServers(base)
	if _, err := os.Stat(gone); !os.IsNotExist(err) {
		t.Errorf("%s: %v, want removed", gone, err)
	}
	for _, p := range kept {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v, want kept", p, err)
		}
	}
}

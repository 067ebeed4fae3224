// Package layout holds only a test: it keeps baton's package dependencies
// pointing downward (cmd -> master -> leaves), as docs and reviews assume.
package layout

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/baton-pm/baton"

// leaves are the packages with one job each; none may import master,
// config or another leaf's policy.
var leaves = []string{
	"internal/control", "internal/listener", "internal/logging", "internal/metrics",
	"internal/pidfile", "internal/proc", "internal/procinfo", "internal/readiness",
	"internal/sdnotify", "internal/unlisten", "internal/cgroup", "internal/fdexec",
	"internal/forkserver", "internal/sockdiag", "internal/pidns",
}

// forbidden lists, per package, module packages it must not depend on.
func forbidden() map[string][]string {
	rules := map[string][]string{
		// Only cmd knows how configuration is spelled.
		"internal/master": {"internal/config"},
		// The public worker package is standard library only.
		"worker": {"internal/"},
	}
	for _, leaf := range leaves {
		rules[leaf] = []string{"internal/master", "internal/config", "cmd/"}
	}
	return rules
}

func TestDependenciesPointDownward(t *testing.T) {
	for pkg, banned := range forbidden() {
		deps := moduleDeps(t, pkg)
		for _, dep := range deps {
			for _, b := range banned {
				if strings.HasPrefix(dep, b) {
					t.Errorf("%s depends on %s; it must not depend on %s", pkg, dep, b)
				}
			}
		}
	}
}

func TestWorkerPackageIsStandardLibraryOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", module+"/worker").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep != module+"/worker" {
			t.Errorf("worker depends on %s; it must use the standard library only", dep)
		}
	}
}

// moduleDeps lists pkg's transitive dependencies inside this module,
// relative to the module path.
func moduleDeps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath", module+"/"+pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	var deps []string
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct{ ImportPath string }
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		if rel, ok := strings.CutPrefix(p.ImportPath, module+"/"); ok && rel != pkg {
			deps = append(deps, rel)
		}
	}
	return deps
}

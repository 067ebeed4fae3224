package e2e

import (
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo: baton demo runs four of its own demo workers that answer with
// who they are, and stops on TERM.
func TestDemo(t *testing.T) {
	t.Parallel()
	b := startBaton(t, "demo", "-b", "127.0.0.1:0")
	workers := map[int]bool{}
	for _, w := range b.waitListed(t, 4).WorkerList {
		workers[w.Pid] = true
	}

	pidInBody := regexp.MustCompile(`\(pid (\d+)`)
	seen := map[int]bool{}
	for i := 0; i < 400 && len(seen) < 2; i++ {
		r, err := get(b.Addr(), "/", 10*time.Second)
		if err != nil || r.status != 200 {
			t.Fatalf("GET /: %v, status %d", err, r.status)
		}
		body := string(r.body)
		if !strings.Contains(body, "hello from baton worker") {
			t.Fatalf("demo answered %q, want hello from baton worker", body)
		}
		m := pidInBody.FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no pid in the demo's answer %q", body)
		}
		pid, _ := strconv.Atoi(m[1])
		if !workers[pid] {
			t.Errorf("answer from pid %d, not one of the workers %v", pid, workers)
		}
		seen[pid] = true
	}
	if len(seen) < 2 {
		t.Errorf("only %d distinct demo workers answered", len(seen))
	}

	b.signal(t, syscall.SIGTERM)
	if code := b.waitExit(t, exitTimeout); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
	b.assertNothingLeft(t)
}

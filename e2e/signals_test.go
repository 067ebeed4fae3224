package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// TestScaleWithTTINAndTTOU: TTIN adds a worker, TTOU retires the one in the
// highest slot, and TTOU never goes below one worker.
func TestScaleWithTTINAndTTOU(t *testing.T) {
	t.Parallel()
	b := startBaton(t, "run", "-w", "1", "--", testworkerBin)
	b.waitListed(t, 1)

	// One signal at a time: two of the same kind pending at once are one.
	scale := func(sig syscall.Signal, workers int) {
		t.Helper()
		b.signal(t, sig)
		b.waitStatus(t, fmt.Sprintf("a target of %d workers", workers), waitTimeout, func(st control.Status) bool {
			return st.Workers == workers
		})
		waitFor(t, waitTimeout, fmt.Sprintf("%d live workers", workers), func() bool {
			return len(childrenOf(b.Pid)) == workers
		})
	}
	scale(syscall.SIGTTIN, 2)
	scale(syscall.SIGTTIN, 3)
	workers := collectWorkers(t, b.Addr(), 3, waitTimeout)
	kids := childrenOf(b.Pid)
	slices.Sort(kids)
	if answered := sortedKeys(workers); !slices.Equal(answered, kids) {
		t.Errorf("workers that answered %v, the master's children %v", answered, kids)
	}
	for pid, w := range workers {
		if w.WorkerID < "1" || w.WorkerID > "3" {
			t.Errorf("worker %d has BATON_WORKER_ID=%s, want 1..3", pid, w.WorkerID)
		}
	}

	scale(syscall.SIGTTOU, 2)
	scale(syscall.SIGTTOU, 1)
	for _, r := range b.waitLogs(t, "worker exited", nil, 2, waitTimeout) {
		if r.str("expected") != "true" || r.int("slot") < 2 {
			t.Errorf("scaling down: %s, want slot 2 or 3 and expected true", r)
		}
	}
	info, err := fetchInfo(b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if info.WorkerID != "1" {
		t.Errorf("the last worker is in slot %s, want 1", info.WorkerID)
	}

	// Below one: nothing may happen. Watch for a while (a negative can
	// only be watched for): the target stays one, and so does the worker.
	last := b.workerPid(t, 1)
	b.signal(t, syscall.SIGTTOU)
	var changed string
	if waitUntil(500*time.Millisecond, func() bool {
		st, err := b.status()
		switch w, ok := inSlot(st, 1); {
		case err != nil:
			changed = err.Error()
		case st.Workers != 1 || len(st.WorkerList) != 1 || !ok || w.Pid != last:
			changed = fmt.Sprintf("target %d, workers %+v", st.Workers, st.WorkerList)
		case len(childrenOf(b.Pid)) != 1:
			changed = fmt.Sprintf("children %v", childrenOf(b.Pid))
		}
		return changed != ""
	}) {
		t.Fatalf("TTOU with one worker changed something: %s; stderr:\n%s", changed, b.Stderr())
	}
	scale(syscall.SIGTTIN, 2)
}

// readLogFile returns the JSON records in a log file (none if it does not
// exist).
func readLogFile(t *testing.T, path string) []record {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var recs []record
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if r, ok := parseRecord(sc.Text()); ok {
			recs = append(recs, r)
		}
	}
	return recs
}

func hasRecord(recs []record, msg string, match func(record) bool) bool {
	for _, r := range recs {
		if r.msg() == msg && (match == nil || match(r)) {
			return true
		}
	}
	return false
}

// TestUSR1ReopensLogFile: after logrotate moves the log file away, USR1
// makes baton write to a new file at the configured path.
func TestUSR1ReopensLogFile(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "baton.log")
	rotated := logPath + ".1"
	b := launch(t, batonSpec{args: []string{"run", "--log-file", logPath, "-w", "1", "--", testworkerBin}})
	waitFor(t, startTimeout, "the first worker in "+logPath, func() bool {
		return hasRecord(readLogFile(t, logPath), "worker started", nil)
	})
	if b.logs("master started", nil) != nil {
		t.Errorf("with --log-file, baton's records went to stderr too:\n%s", b.Stderr())
	}

	if err := os.Rename(logPath, rotated); err != nil {
		t.Fatal(err)
	}
	b.signal(t, syscall.SIGUSR1)
	waitFor(t, waitTimeout, `"log file reopened" in the new `+logPath, func() bool {
		return hasRecord(readLogFile(t, logPath), "log file reopened", nil)
	})
	b.signal(t, syscall.SIGTTIN)
	waitFor(t, waitTimeout, "the scale-up records in the new "+logPath, func() bool {
		recs := readLogFile(t, logPath)
		return hasRecord(recs, "scaling up", nil) &&
			hasRecord(recs, "worker started", func(r record) bool { return r.int("slot") == 2 })
	})
	old := readLogFile(t, rotated)
	if !hasRecord(old, "master started", nil) {
		t.Errorf("the rotated file has no \"master started\" record")
	}
	for _, msg := range []string{"log file reopened", "scaling up"} {
		if hasRecord(old, msg, nil) {
			t.Errorf("%q went to the rotated file after USR1", msg)
		}
	}
}

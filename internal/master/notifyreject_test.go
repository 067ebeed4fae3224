package master

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/sdnotify"
)

// lockedBuffer is a log output the test reads while the master writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// records are the JSON log records with message msg.
func (b *lockedBuffer) records(t *testing.T, msg string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(b.buf.String(), "\n") {
		if line == "" {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

// rejectCounter is an Observer that counts refused notify messages.
type rejectCounter struct {
	mu       sync.Mutex
	rejected int
}

func (*rejectCounter) ReloadFinished(bool, time.Duration) {}
func (*rejectCounter) ReloadRejected()                    {}
func (*rejectCounter) WorkerRestarted(string)             {}
func (*rejectCounter) WorkerBooted(time.Duration)         {}
func (c *rejectCounter) NotifyRejected(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rejected += n
}

func (c *rejectCounter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rejected
}

// sendAs delivers a notify message to worker's socket from sender.
func (tb *testbed) sendAs(worker, sender int, text string) {
	tb.t.Helper()
	n := tb.w.notify[tb.proc(worker).env("NOTIFY_SOCKET")]
	if n == nil {
		tb.t.Fatalf("worker %d has no notify socket", worker)
	}
	n.msgs <- sdnotify.Message{Fields: sdnotify.Parse([]byte(text)), Pid: int32(sender), Uid: 65534}
	tb.settle()
}

const rejectMsg = "refused notify messages from a process that is not the worker's"

// A flood of messages from a process outside a worker makes at most one
// log line a second for that worker, each with the count since the last
// one, every message counted in the metrics; the flood marks nobody
// ready, and the worker's own READY=1 still does.
func TestNotifyRejectsAreLoggedOncePerSecond(t *testing.T) {
	inBubble(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		logs, obs := &lockedBuffer{}, &rejectCounter{}
		tb.m.post(func() {
			tb.m.log = slog.New(slog.NewJSONHandler(logs, nil))
			tb.m.metrics = obs
		})
		tb.settle()
		pids := tb.workers(1, "starting")
		const stranger = 4242
		start := time.Now()
		sent := 0
		// 3.5 s of 5 messages every 10 ms to slot 1; one to slot 2.
		for time.Since(start) < 3500*time.Millisecond {
			for range 5 {
				tb.sendAs(pids[0], stranger, "READY=1")
				sent++
			}
			tb.wait(10 * time.Millisecond)
		}
		tb.sendAs(pids[1], stranger, "READY=1\nSTATUS=forged")
		if n := tb.count(1, "starting"); n != 2 {
			t.Fatalf("%d workers still starting after the flood, want 2: a stranger's READY=1 counted", n)
		}
		if st := tb.status().WorkerList; st[0].Status == "forged" || st[1].Status == "forged" {
			t.Errorf("a stranger's STATUS= was taken: %+v", st)
		}
		tb.wait(2 * time.Second) // the last count is reported once its second is up

		var lines []map[string]any
		counted := 0
		var times []time.Time
		for _, r := range logs.records(t, rejectMsg) {
			if r["slot"] != float64(1) {
				continue
			}
			lines = append(lines, r)
			counted += int(r["count"].(float64))
			ts, _ := time.Parse(time.RFC3339Nano, r["time"].(string))
			times = append(times, ts)
			if r["sender_pid"] != float64(stranger) || r["sender_uid"] != float64(65534) || r["pid"] != float64(pids[0]) {
				t.Errorf("log line %v: want the stranger's pid and uid and the worker's pid", r)
			}
		}
		t.Logf("%d messages in %d log lines", sent, len(lines))
		if len(lines) < 4 || len(lines) > 5 {
			t.Errorf("%d log lines for 3.5 s of flood, want 4 or 5 (one a second, the first at once)", len(lines))
		}
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap < rejectLogInterval {
				t.Errorf("log lines %d and %d %v apart, want at least %v", i-1, i, gap, rejectLogInterval)
			}
		}
		if len(lines) > 0 && lines[0]["count"] != float64(1) {
			t.Errorf("first line's count %v, want 1: the first refusal is logged at once", lines[0]["count"])
		}
		if counted != sent {
			t.Errorf("the log lines count %d refused messages, %d were sent", counted, sent)
		}
		if other := len(logs.records(t, rejectMsg)) - len(lines); other != 1 {
			t.Errorf("%d log lines for slot 2, want 1", other)
		}
		if got := obs.total(); got != sent+1 {
			t.Errorf("metrics counted %d refused messages, want %d", got, sent+1)
		}

		tb.ready(pids...)
		if n := tb.count(1, "ready"); n != 2 {
			t.Errorf("%d workers ready after their own READY=1, want 2", n)
		}
	})
}

// A refusal after a quiet second is logged at once again; the count left
// when the worker's socket closes is reported then.
func TestNotifyRejectsFlushedWhenTheSocketCloses(t *testing.T) {
	serving(t, options(gen(1)), func(t *testing.T, tb *testbed) {
		logs := &lockedBuffer{}
		tb.m.post(func() { tb.m.log = slog.New(slog.NewJSONHandler(logs, nil)) })
		tb.settle()
		pid := tb.workers(1, "ready")[0]
		tb.sendAs(pid, 7, "WATCHDOG=1")
		tb.wait(3 * time.Second)
		tb.sendAs(pid, 7, "WATCHDOG=1") // a second later: at once
		tb.sendAs(pid, 7, "WATCHDOG=1")
		tb.sendAs(pid, 7, "WATCHDOG=1")
		if n := len(logs.records(t, rejectMsg)); n != 2 {
			t.Fatalf("%d log lines, want 2: one per refusal after a quiet second", n)
		}
		tb.exit(pid, 1)
		recs := logs.records(t, rejectMsg)
		if len(recs) != 3 || recs[2]["count"] != float64(2) {
			t.Fatalf("log lines %v; want a third with the last 2 refusals when the worker exits", recs)
		}
	})
}

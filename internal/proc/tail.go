package proc

import (
	"bytes"
	"io"
	"os"
	"strings"
	"sync"
)

// tailBytes bounds what is kept of a worker's stderr: enough for the
// traceback of a failed boot, never a memory problem for a chatty worker.
const tailBytes = 4096

// Tail passes a worker's stderr through to baton's own, unmodified, and
// keeps its last lines so a failed boot can be reported with them.
type Tail struct {
	mu   sync.Mutex
	buf  []byte
	done chan struct{}
}

// newTail copies from r to w until r reaches EOF (every process of the
// worker closed its stderr).
func newTail(r io.ReadCloser, w io.Writer) *Tail {
	t := &Tail{done: make(chan struct{})}
	go func() {
		defer close(t.done)
		defer r.Close()
		// One tail's worth per read: the buffer lives as long as the worker,
		// and with 64 workers mid-reload a 32 KiB one cost the master 4 MiB.
		chunk := make([]byte, tailBytes)
		for {
			n, err := r.Read(chunk)
			if n > 0 {
				_, _ = w.Write(chunk[:n])
				t.keep(chunk[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return t
}

func (t *Tail) keep(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - tailBytes; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
}

// Lines returns up to n of the last complete or partial lines written.
func (t *Tail) Lines(n int) []string {
	t.mu.Lock()
	text := string(bytes.TrimRight(t.buf, "\n"))
	t.mu.Unlock()
	if text == "" {
		return nil
	}
	lines := strings.Split(text, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// Wait returns a channel that is closed once the worker's stderr is
// closed, when its last lines are in; callers bound the wait, since a
// grandchild may keep stderr open.
func (t *Tail) Wait() <-chan struct{} { return t.done }

// stderrPipe makes the pipe a worker writes its stderr to. The write end
// is switched to blocking mode (Fd does that), as programs expect of
// stderr; the read end stays with the Go runtime's poller.
func stderrPipe() (r *os.File, w *os.File, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	w.Fd()
	return r, w, nil
}

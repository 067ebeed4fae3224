package proc

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
)

// What is kept of a worker's stderr: its first headBytes and its last
// tailBytes, enough for a failed boot's message and the end of its
// traceback, never a memory problem for a chatty worker. Both are needed:
// Python prints the message last, Ruby and Java first, with the backtrace
// after it.
const (
	headBytes = 2048
	tailBytes = 4096
)

// Tail passes a worker's stderr through to baton's own, unmodified, and
// keeps its first and last lines so a failed boot can be reported with
// them.
type Tail struct {
	mu   sync.Mutex
	head []byte // the first headBytes written
	buf  []byte // the last tailBytes written
	// newlines counts every '\n' written, written every byte, and last is
	// the last byte: together they number the lines.
	newlines int
	written  int
	last     byte
	done     chan struct{}
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
	if room := headBytes - len(t.head); room > 0 {
		t.head = append(t.head, p[:min(room, len(p))]...)
	}
	t.newlines += bytes.Count(p, []byte{'\n'})
	t.written += len(p)
	t.last = p[len(p)-1]
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - tailBytes; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
}

// Lines returns the first first and the last last lines written (a line
// that is still being written counts), with a line "... N lines omitted
// ..." between them when there were more; all of them when there were
// not. A line longer than what is kept is cut.
func (t *Tail) Lines(first, last int) []string {
	t.mu.Lock()
	head, tail := splitLines(t.head), splitLines(t.buf)
	total := t.newlines
	if t.written > 0 && t.last != '\n' {
		total++ // a last line without its newline yet
	}
	t.mu.Unlock()
	if total == 0 {
		return nil
	}
	// tail holds lines tailStart..total-1; its first one may be cut at
	// the front. head holds lines 0..len(head)-1; its last one may be cut
	// at the end.
	tailStart := total - len(tail)
	out := slices.Clone(head[:min(first, len(head))])
	from := max(len(out), total-last, tailStart)
	if omitted := from - len(out); omitted > 0 {
		out = append(out, fmt.Sprintf("... %d lines omitted ...", omitted))
	}
	for i := from; i < total; i++ {
		out = append(out, tail[i-tailStart])
	}
	return out
}

// splitLines splits kept bytes into lines, without the newline that
// ends the last one.
func splitLines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
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

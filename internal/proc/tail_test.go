package proc

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// tailOf feeds text to a Tail in chunks of size bytes (a pipe's reads cut
// lines anywhere) and returns it once it has read everything.
func tailOf(t *testing.T, text string, size int) *Tail {
	t.Helper()
	r, w := io.Pipe()
	tail := newTail(r, io.Discard)
	go func() {
		for s := text; len(s) > 0; {
			n := min(size, len(s))
			w.Write([]byte(s[:n]))
			s = s[n:]
		}
		w.Close()
	}()
	select {
	case <-tail.Wait():
	case <-time.After(10 * time.Second):
		t.Fatal("the tail did not see the end of its input")
	}
	return tail
}

func numbered(n int) []string {
	lines := make([]string, n)
	for i := range lines {
		lines[i] = fmt.Sprintf("line %d", i+1)
	}
	return lines
}

func TestTailKeepsTheFirstAndTheLastLines(t *testing.T) {
	// Ruby's uncaught exception: the message is line 1 of 40.
	lines := numbered(40)
	lines[0] = "app.rb:3:in 'boot': the database is gone (RuntimeError)"
	for _, size := range []int{1, 7, 4096} {
		got := tailOf(t, strings.Join(lines, "\n")+"\n", size).Lines(10, 20)
		want := slices.Concat(lines[:10], []string{"... 10 lines omitted ..."}, lines[20:])
		if !slices.Equal(got, want) {
			t.Errorf("chunks of %d bytes: got %q\nwant %q", size, got, want)
		}
	}
}

func TestTailWithFewLinesReturnsThemAll(t *testing.T) {
	for _, n := range []int{1, 10, 29, 30} {
		lines := numbered(n)
		got := tailOf(t, strings.Join(lines, "\n"), 5).Lines(10, 20) // no final newline
		if !slices.Equal(got, lines) {
			t.Errorf("%d lines: got %q", n, got)
		}
	}
	if got := tailOf(t, "", 1).Lines(10, 20); got != nil {
		t.Errorf("no output: got %q", got)
	}
}

// A chatty worker: far more than tailBytes, and the count of lines left
// out is still right.
func TestTailOfALongOutput(t *testing.T) {
	lines := numbered(5000)
	got := tailOf(t, strings.Join(lines, "\n")+"\n", 1000).Lines(10, 20)
	want := slices.Concat(lines[:10], []string{"... 4970 lines omitted ..."}, lines[4980:])
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// Lines so long that the kept bytes hold fewer than asked: whatever is
// kept is shown, and the count stays right.
func TestTailOfLongLines(t *testing.T) {
	long := strings.Repeat("x", 1500)
	lines := []string{"error: first", long, long, long, long, long, "last"}
	got := tailOf(t, strings.Join(lines, "\n")+"\n", 4096).Lines(10, 20)
	if len(got) < 3 || got[0] != "error: first" || got[len(got)-1] != "last" {
		t.Fatalf("got %d lines, first %.40q, last %.40q", len(got), got[0], got[len(got)-1])
	}
	for _, l := range got {
		if strings.Contains(l, "omitted") {
			t.Errorf("a marker %q, but every line is at least partly shown", l)
		}
	}
}

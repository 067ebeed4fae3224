package procinfo

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// The test binary's code and read-only data are found, and none of its
// writable mappings.
func TestProgramReadOnly(t *testing.T) {
	ranges, err := ProgramReadOnly()
	if err != nil {
		t.Fatal(err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	want := map[Range]bool{}
	for line := range strings.Lines(string(maps)) {
		f := strings.Fields(line)
		if len(f) < 6 || f[5] != exe || strings.Contains(f[1], "w") {
			continue
		}
		a, b, _ := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(a, 16, 64)
		end, err2 := strconv.ParseUint(b, 16, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("maps line %q", line)
		}
		want[Range{uintptr(start), uintptr(end)}] = true
	}
	if len(want) < 2 {
		t.Fatalf("the test binary has %d read-only mappings, want its code and its read-only data:\n%s", len(want), maps)
	}
	if len(ranges) != len(want) {
		t.Fatalf("ProgramReadOnly = %v, want %v", ranges, want)
	}
	for _, r := range ranges {
		if !want[r] {
			t.Errorf("%#x-%#x is not one of the executable's read-only mappings %v", r.Start, r.End, want)
		}
	}
}

// A forked child's private memory leaves out what it shares with its
// parent; its RSS counts it.
func TestPrivateLeavesOutSharedPages(t *testing.T) {
	const size = 64 << 20
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = 1 // resident, in this process only
	}
	own := Private([]int{os.Getpid()})
	if own < size {
		t.Fatalf("Private = %d bytes, want at least the %d this process wrote", own, size)
	}
	if rss := RSS([]int{os.Getpid()}); rss < own {
		t.Fatalf("RSS %d < Private %d", rss, own)
	}
	if Private([]int{999999999}) != 0 {
		t.Fatal("a process that does not exist has private memory")
	}
	buf[size-1] = 2
}

package procinfo

import (
	"fmt"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// Range is a span of this process's address space, [Start, End).
type Range struct{ Start, End uintptr }

// ProgramReadOnly returns the mappings of this process's own executable
// that nothing can have written to: private, not writable (its code and
// read-only data). Their pages are the file's, in the page cache, so a
// page dropped from the mapping comes back from there, unchanged, when it
// is next touched. The executable is found by device and inode, which
// still match once the file on disk was replaced (an upgrade renames the
// new binary over it).
func ProgramReadOnly() ([]Range, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return nil, fmt.Errorf("stat /proc/self/exe: %w", err)
	}
	self, err := procfs.Self()
	if err != nil {
		return nil, err
	}
	maps, err := self.ProcMaps()
	if err != nil {
		return nil, err
	}
	var out []Range
	for _, m := range maps {
		if m.Inode != st.Ino || m.Dev != uint64(st.Dev) || m.Perms == nil {
			continue
		}
		if m.Perms.Write || m.Perms.Shared || !m.Perms.Private {
			continue
		}
		out = append(out, Range{m.StartAddr, m.EndAddr})
	}
	return out, nil
}

package listener

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/fdexec"
)

// HandoverEnv carries, to a new master started by a binary upgrade, the
// name and address of each listener it inherits as fds 3, 4, ...:
// "name|addr" entries separated by newlines; or, to the master's own new
// image after an in-place re-exec, "name|addr|fd" with the fd each one
// kept.
const HandoverEnv = "BATON_UPGRADE_LISTENERS"

// HandoverValue describes ls for HandoverEnv.
func HandoverValue(ls []*Listener) string {
	entries := make([]string, len(ls))
	for i, l := range ls {
		entries[i] = l.Name + "|" + l.Addr
	}
	return strings.Join(entries, "\n")
}

// HandoverInPlace describes ls for HandoverEnv to this process's own next
// image (re-exec): each listener keeps its fd, which is made to survive
// the exec; KeepOnExec(false) undoes that if the exec fails.
func HandoverInPlace(ls []*Listener) string {
	entries := make([]string, len(ls))
	for i, l := range ls {
		entries[i] = l.Name + "|" + l.Addr + "|" + strconv.Itoa(l.fd)
	}
	return strings.Join(entries, "\n")
}

// KeepOnExec makes the listeners' fds survive an exec (keep), or not.
func KeepOnExec(ls []*Listener, keep bool) error {
	for _, l := range ls {
		if err := fdexec.Keep(l.fd, keep); err != nil {
			return fmt.Errorf("listener %s: %w", l.Name, err)
		}
	}
	return nil
}

// FromHandover adopts the listeners an old master handed over, if this
// process was started by an upgrade; ok is false otherwise. The variable
// is removed, so workers never see it.
func FromHandover() (ls []*Listener, ok bool, err error) {
	value, ok := os.LookupEnv(HandoverEnv)
	if !ok {
		return nil, false, nil
	}
	os.Unsetenv(HandoverEnv)
	for i, entry := range strings.Split(value, "\n") {
		name, addr, _ := strings.Cut(entry, "|")
		fd := 3 + i
		if a, n, ok := strings.Cut(addr, "|"); ok {
			addr = a
			if fd, err = strconv.Atoi(n); err != nil {
				CloseAll(ls)
				return nil, true, fmt.Errorf("listener %s: bad fd %q in %s", name, n, HandoverEnv)
			}
		}
		l, err := adoptFD(Spec{Name: name, Network: "fd", FD: fd})
		if err != nil {
			CloseAll(ls)
			return nil, true, fmt.Errorf("listener %s (%s) from the old master: %w", name, addr, err)
		}
		l.Addr = addr
		// The new master owns the unix socket file from now on.
		l.path, _ = strings.CutPrefix(addr, "unix:")
		if l.path == addr {
			l.path = ""
		}
		ls = append(ls, l)
	}
	return ls, true, nil
}

// Release closes the socket without removing its unix socket file: a new
// master serves it now.
func (l *Listener) Release() error {
	l.path = ""
	return unix.Close(l.fd)
}

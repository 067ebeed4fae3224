package readiness

import "golang.org/x/sys/unix"

// kindOf classifies a system call number; the calls every Linux
// architecture has are here, the older ones only amd64 has are in
// syscalls_amd64.go.
func kindOf(nr int64) callKind {
	switch nr {
	case unix.SYS_ACCEPT, unix.SYS_ACCEPT4:
		return acceptCall
	case unix.SYS_PPOLL:
		return pollCall
	case unix.SYS_PSELECT6:
		return selectCall
	}
	return legacyKindOf(nr)
}

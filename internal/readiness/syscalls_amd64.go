package readiness

import "golang.org/x/sys/unix"

func legacyKindOf(nr int64) callKind {
	switch nr {
	case unix.SYS_POLL:
		return pollCall
	case unix.SYS_SELECT:
		return selectCall
	}
	return otherCall
}

//go:build !amd64

package readiness

// Architectures such as arm64 have no poll or select system calls; libc
// implements them with ppoll and pselect6.
func legacyKindOf(nr int64) callKind { return otherCall }

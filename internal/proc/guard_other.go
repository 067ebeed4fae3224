//go:build !amd64 && !arm64

package proc

// auditArch 0: no filter for this architecture (ErrGuardUnsupported).
const auditArch = 0

package proc

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A listening socket is shared by the master and every worker, and
// shutdown(2) acts on the socket, not on the caller's descriptor: a worker
// that shuts fd 3 down for reading when it stops (a common way to wake its
// own threads blocked in accept) makes the listener refuse connections,
// resets the ones queued on it, and breaks the accept loop of every other
// worker, the next generation's included. Re-arming it afterwards (the
// master does, see package listener) cannot save what was lost meanwhile.
//
// So the shim installs a seccomp filter, inherited by everything the worker
// starts, that turns shutdown(fd, SHUT_RD or SHUT_RDWR) on the listeners'
// descriptors (3 .. 3+N-1) into a call that succeeds without doing
// anything. shutdown(SHUT_WR), which leaves a listener working, and
// shutdown of any other descriptor (a connection) are untouched. A worker
// that dup'd a listener elsewhere and shuts the dup down is not covered:
// the master's listener check catches that one.

// ErrGuardUnsupported is returned where the filter is not built for the
// architecture.
var ErrGuardUnsupported = errors.New("the listener guard is not available on this architecture")

// guardListeners installs the filter for listeners at fds 3..3+n-1.
func guardListeners(n int) error {
	if n == 0 {
		return nil
	}
	if auditArch == 0 {
		return ErrGuardUnsupported
	}
	// A process without CAP_SYS_ADMIN (a worker that runs as another
	// user) may install a filter only with no_new_privs: a setuid program
	// or file capabilities that worker uses gain nothing then, as under
	// systemd's NoNewPrivileges=. A root worker is left as it is.
	if unix.Geteuid() != 0 {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	prog := guardProgram(uint32(n))
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&fprog)), 0, 0); err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}

// seccomp_data's layout: nr, arch, instruction pointer, then the six
// arguments, 64 bits each, of which the low half comes first on the
// little-endian architectures the filter is built for.
const (
	offNR   = 0
	offArch = 4
	offArg0 = 16
	offArg1 = 24
)

// guardProgram is the filter for n listeners.
func guardProgram(n uint32) []unix.SockFilter {
	const (
		ld  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		ret = unix.BPF_RET | unix.BPF_K
	)
	allow := unix.SockFilter{Code: ret, K: unix.SECCOMP_RET_ALLOW}
	// Jump offsets count the instructions to skip; "to allow" is the
	// distance to the last instruction.
	return []unix.SockFilter{
		/* 0 */ {Code: ld, K: offArch},
		/* 1 */ {Code: jeq, K: auditArch, Jt: 0, Jf: 8}, // another ABI: allow
		/* 2 */ {Code: ld, K: offNR},
		/* 3 */ {Code: jeq, K: uint32(unix.SYS_SHUTDOWN), Jt: 0, Jf: 6},
		/* 4 */ {Code: ld, K: offArg0},
		/* 5 */ {Code: jge, K: 3, Jt: 0, Jf: 4}, // fd < 3: allow
		/* 6 */ {Code: jge, K: 3 + n, Jt: 3, Jf: 0}, // fd beyond the listeners: allow
		/* 7 */ {Code: ld, K: offArg1},
		/* 8 */ {Code: jeq, K: unix.SHUT_WR, Jt: 1, Jf: 0},
		/* 9 */ {Code: ret, K: unix.SECCOMP_RET_ERRNO | 0}, // succeed, do nothing
		/* 10 */ allow,
	}
}

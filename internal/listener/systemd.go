package listener

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// systemdFD is one socket systemd passed (socket activation).
type systemdFD struct {
	fd   int
	name string
}

// systemdFDs reads the sockets systemd passed this process, by the
// LISTEN_FDS protocol: fds 3, 4, ... with LISTEN_PID naming us.
func systemdFDs() ([]systemdFD, error) {
	if pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID")); pid != os.Getpid() {
		return nil, fmt.Errorf("baton was not started by systemd socket activation (LISTEN_PID is %q, baton is pid %d)",
			os.Getenv("LISTEN_PID"), os.Getpid())
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("systemd passed no socket (LISTEN_FDS is %q)", os.Getenv("LISTEN_FDS"))
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	fds := make([]systemdFD, n)
	for i := range fds {
		fds[i] = systemdFD{fd: 3 + i, name: "unknown"}
		if i < len(names) && names[i] != "" {
			fds[i].name = names[i]
		}
	}
	return fds, nil
}

// openSystemd adopts the sockets systemd passed: every one for bind =
// "systemd", or those named s.Address for "systemd:NAME". Each keeps the
// name systemd gave it.
func openSystemd(s Spec) ([]*Listener, error) {
	label := "systemd"
	if s.Address != "" {
		label += ":" + s.Address
	}
	fds, err := systemdFDs()
	if err != nil {
		return nil, fmt.Errorf("bind %s: %w", label, err)
	}
	var ls []*Listener
	var names []string
	for _, f := range fds {
		names = append(names, f.name)
		if s.Address != "" && f.name != s.Address {
			continue
		}
		l, err := adoptFD(Spec{Name: f.name, Network: "fd", FD: f.fd})
		if err != nil {
			CloseAll(ls)
			return nil, fmt.Errorf("bind %s: %w", label, err)
		}
		ls = append(ls, l)
	}
	if len(ls) == 0 {
		return nil, fmt.Errorf("bind %s: systemd passed no socket of that name (it passed: %s)", label, strings.Join(names, ", "))
	}
	return ls, nil
}

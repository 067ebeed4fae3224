package config

import (
	"fmt"
	"strings"
	"syscall"
)

// stopSignals are the signals a worker may be asked to stop with, by name
// without "SIG". Numbers are not taken: they differ between systems.
var stopSignals = []struct {
	name string
	sig  syscall.Signal
}{
	{"TERM", syscall.SIGTERM},
	{"INT", syscall.SIGINT},
	{"QUIT", syscall.SIGQUIT},
	{"HUP", syscall.SIGHUP},
	{"USR1", syscall.SIGUSR1},
	{"USR2", syscall.SIGUSR2},
	{"WINCH", syscall.SIGWINCH},
	{"KILL", syscall.SIGKILL},
}

func signalNames() string {
	names := make([]string, len(stopSignals))
	for i, s := range stopSignals {
		names[i] = s.name
	}
	return strings.Join(names, ", ")
}

// signalSetting is a signal name: TERM, SIGTERM, term and sigterm are one.
func signalSetting(p *syscall.Signal) setting {
	return scalar[syscall.Signal]{
		field:  p,
		parse:  parseSignal,
		format: func(s syscall.Signal) string { return quote(signalName(s)) },
		what:   "a signal name (" + signalNames() + ")",
	}
}

func parseSignal(s string) (syscall.Signal, error) {
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	for _, known := range stopSignals {
		if known.name == name {
			return known.sig, nil
		}
	}
	return 0, fmt.Errorf("expected a signal name (%s), got %q", signalNames(), s)
}

// signalName is the name parseSignal takes for sig.
func signalName(sig syscall.Signal) string {
	for _, known := range stopSignals {
		if known.sig == sig {
			return known.name
		}
	}
	return fmt.Sprintf("%d", int(sig)) // not from Load; TOML will not load it
}

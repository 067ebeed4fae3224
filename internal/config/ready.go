package config

import (
	"fmt"
	"strings"
	"time"
)

// Readiness is how baton learns that a worker accepts connections.
type Readiness struct {
	// Mode is "auto" (seen waiting on a listener, from /proc), "notify"
	// (READY=1 on NOTIFY_SOCKET) or "delay" (a fixed time after start).
	Mode  string
	Delay time.Duration // for "delay"
}

func (r Readiness) String() string {
	if r.Mode == "delay" {
		return "delay:" + r.Delay.String()
	}
	return r.Mode
}

const readyExpected = `"auto", "notify" or "delay:DURATION" (delay:2s)`

// readySetting is the ready key: auto, notify or delay:DURATION.
func readySetting(p *Readiness) setting {
	return scalar[Readiness]{
		field:  p,
		parse:  parseReadiness,
		format: func(r Readiness) string { return quote(r.String()) },
		what:   readyExpected,
	}
}

func parseReadiness(s string) (Readiness, error) {
	switch s {
	case "auto", "notify":
		return Readiness{Mode: s}, nil
	}
	text, ok := strings.CutPrefix(s, "delay:")
	if !ok {
		return Readiness{}, fmt.Errorf("expected %s, got %q", readyExpected, s)
	}
	d, err := parseDuration(text)
	if err != nil {
		return Readiness{}, fmt.Errorf("delay: %w", err)
	}
	return Readiness{Mode: "delay", Delay: d}, nil
}

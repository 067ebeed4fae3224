package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Servers already running on the machine spoil what the suite measures:
// their CPU competes with the runs, and their Python processes share the
// interpreter's pages with every tree measured, which lowers each tree's
// PSS. An idle one escapes the quiet-machine wait, so the suite looks for
// them by name before it starts and refuses to run with any (unless
// -allow-other-servers).

// otherServers lists the processes of this machine that are servers of the
// kinds the suite measures, as "pid: command line".
func otherServers() []string {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var found []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		argv := strings.Split(string(bytes.TrimRight(raw, "\x00")), "\x00")
		if isServer(argv) {
			found = append(found, fmt.Sprintf("%d: %s", pid, strings.Join(argv, " ")))
		}
	}
	return found
}

// serverNames are the programs the suite runs, by their file name.
var serverNames = map[string]bool{"gunicorn": true, "uvicorn": true, "hypercorn": true, "daphne": true}

// isServer tells a server of the kinds the suite measures from its argv: a
// baton master (baton, or any file named baton-*, running "run" or
// "demo"), gunicorn or uvicorn and the like as programs or python -m
// modules or as the console scripts their interpreter runs, and baton's
// preload templates and their workers.
func isServer(argv []string) bool {
	name := filepath.Base(argv[0])
	switch {
	case (name == "baton" || strings.HasPrefix(name, "baton-")) && len(argv) > 1 && (argv[1] == "run" || argv[1] == "demo"):
		return true
	case serverNames[name]:
		return true
	case strings.HasPrefix(name, "python"):
		// A console script such as /usr/bin/gunicorn runs as its
		// interpreter, with the script's path next.
		if len(argv) > 1 && serverNames[filepath.Base(argv[1])] {
			return true
		}
		for i, a := range argv[1:] {
			if strings.Contains(a, "baton-forkserver") || a == "-m" && i+2 < len(argv) && serverNames[argv[i+2]] {
				return true
			}
		}
	}
	return false
}

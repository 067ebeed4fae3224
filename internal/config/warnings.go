package config

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Warnings are settings that are valid but known to go wrong with the
// command they run: baton check prints them and the master logs them at
// start; neither refuses the configuration.
func (c *Config) Warnings() Problems { return c.warnings }

// warn finds what Warnings reports, placing each at where its key was set.
func (l *loader) warn() {
	if l.cfg.Ready.Mode == "notify" {
		if server := notifiesBeforeLoading(l.cfg.Command); server != "" {
			l.cfg.warnings = append(l.cfg.warnings, l.from["ready"].problem("ready", readyTooEarly(server)))
		}
	}
	if len(l.cfg.Preload) > 0 {
		if why := preloadDefeated(l.cfg.Command); why != "" {
			l.cfg.warnings = append(l.cfg.warnings, l.from["preload"].problem("preload", why))
		}
	}
}

// spawningServers start fresh interpreters of their own for --workers N
// and --reload (multiprocessing's spawn), which import the app again.
var spawningServers = map[string]bool{"uvicorn": true, "hypercorn": true}

// preloadDefeated says why preload shares nothing with the processes the
// command's server runs, or "": uvicorn or hypercorn with --workers above
// 1 or --reload serve from interpreters they spawn themselves.
func preloadDefeated(command []string) string {
	if len(command) == 0 {
		return ""
	}
	server, args := filepath.Base(command[0]), command[1:]
	if pythonName.MatchString(server) {
		server = pythonModule(args)
		args = afterModule(args)
	}
	if !spawningServers[server] {
		return ""
	}
	for i, a := range args {
		switch {
		case a == "--reload":
			return "with " + server + " --reload: the reloader serves from an interpreter it spawns, which imports the app again, " +
				"so preload shares nothing with it; baton's --watch reloads on changes and keeps preload's sharing"
		case workersAbove1(a, args[i+1:], server == "hypercorn"):
			return "with " + server + " --workers: each worker baton forks starts that many interpreters of its own, which import " +
				"the app again, so preload shares nothing with them; leave --workers out and set baton's workers instead"
		}
	}
	return ""
}

// workersAbove1 reports whether a (with the arguments after it) sets more
// than one worker: --workers N, --workers=N, and hypercorn's -w N.
func workersAbove1(a string, rest []string, short bool) bool {
	value, ok := "", false
	switch {
	case strings.HasPrefix(a, "--workers="):
		value, ok = strings.TrimPrefix(a, "--workers="), true
	case (a == "--workers" || short && a == "-w") && len(rest) > 0:
		value, ok = rest[0], true
	}
	n, err := strconv.Atoi(value)
	return ok && err == nil && n > 1
}

// afterModule is python's arguments after -m MODULE: the module's own.
func afterModule(args []string) []string {
	for i, a := range args {
		if a == "-m" && i+1 < len(args) {
			return args[i+2:]
		}
		if strings.HasPrefix(a, "-m") && len(a) > 2 {
			return args[i+1:]
		}
	}
	return nil
}

// readyTooEarly is the warning about ready = "notify" with a server that
// sends READY=1 before its app is loaded.
func readyTooEarly(server string) string {
	return `"notify" with ` + server + `: ` + server + `'s arbiter sends READY=1 before its workers have imported the app, ` +
		`so a deploy whose app fails to import counts as ready, the reload "succeeds" in a fraction of a second ` +
		`and the new workers crash-loop while the old ones are already gone; use ready = "auto" (baton sees ` +
		`the workers wait on the listener, which they do only once the app is loaded)`
}

// pythonName matches python, python3, python3.11 as a program's name.
var pythonName = regexp.MustCompile(`^python[0-9.]*$`)

// notifiesBeforeLoading names the server command runs if it is one known
// to send READY=1 before its app is loaded, else "": gunicorn, run as
// gunicorn or as python -m gunicorn.
func notifiesBeforeLoading(command []string) string {
	if len(command) == 0 {
		return ""
	}
	name := filepath.Base(command[0])
	if name == "gunicorn" || name == "gunicorn3" {
		return "gunicorn"
	}
	if pythonName.MatchString(name) && pythonModule(command[1:]) == "gunicorn" {
		return "gunicorn"
	}
	return ""
}

// pythonModule is the module python's arguments run with -m, or "".
// Options come before it; the first other argument is a script.
func pythonModule(args []string) string {
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-m" && i+1 < len(args):
			return args[i+1]
		case strings.HasPrefix(a, "-m") && len(a) > 2:
			return a[2:]
		case a == "-W" || a == "-X":
			i++ // an option with its value: -W ignore, -X dev
		case a == "-c" || !strings.HasPrefix(a, "-"):
			return "" // a command or a script, not a module
		}
	}
	return ""
}

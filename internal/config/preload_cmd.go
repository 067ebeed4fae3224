package config

import "github.com/baton-pm/baton/internal/forkserver"

// checkPreloadCommand checks that the worker command at path (argv as
// given) is a Python program a preload template can run in-process, an
// "#!/usr/bin/env python3" script's interpreter looked up in the workers'
// PATH.
func checkPreloadCommand(path string, argv []string, pathList string) error {
	_, _, err := forkserver.InterpreterIn(path, argv, pathList)
	return err
}

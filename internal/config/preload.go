package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
)

// moduleName is a dotted Python module name, as `import` takes it.
var moduleName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)

// checkPreload checks preload: module names, a Python worker command,
// and the subreaper the forked workers need to become baton's children.
func checkPreload(c *Config) error {
	if len(c.Preload) == 0 {
		return nil
	}
	for _, mod := range c.Preload {
		if !moduleName.MatchString(mod) {
			return fmt.Errorf("%q is not a Python module name (expected dotted names such as \"proj.asgi\"; give the module, not a file path or \"module:attribute\")", mod)
		}
	}
	if !c.Subreaper {
		return errors.New("preload needs subreaper = true: the workers a template forks must become baton's own children")
	}
	if c.CommandPath == "" {
		return nil // the command's own check reports it
	}
	pathList, ok := c.Env["PATH"]
	if !ok {
		pathList = os.Getenv("PATH")
	}
	return checkPreloadCommand(c.CommandPath, c.Command, pathList)
}

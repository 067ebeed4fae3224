package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// testDir is a directory for one test, holding a baton.toml and an
// executable "app".
type testDir struct {
	t    *testing.T
	path string
}

func newTestDir(t *testing.T) *testDir {
	t.Helper()
	d := &testDir{t: t, path: t.TempDir()}
	d.write("app", "#!/bin/sh\n", 0o755)
	return d
}

// openToAll lets every user search the test directory and its parent
// (t.TempDir makes both 0700), so that workers run as another user can
// reach the app.
func (d *testDir) openToAll() {
	d.t.Helper()
	for _, dir := range []string{d.path, filepath.Dir(d.path)} {
		if err := os.Chmod(dir, 0o755); err != nil {
			d.t.Fatal(err)
		}
	}
}

// app is the absolute path of the executable "app".
func (d *testDir) app() string { return filepath.Join(d.path, "app") }

func (d *testDir) write(name, text string, mode os.FileMode) string {
	d.t.Helper()
	path := filepath.Join(d.path, name)
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		d.t.Fatal(err)
	}
	return path
}

// config writes baton.toml and returns its path.
func (d *testDir) config(text string) string {
	return d.write("baton.toml", text, 0o644)
}

// load parses args as baton's flags would be and loads them with command.
func (d *testDir) load(args []string, command ...string) (*Config, error) {
	d.t.Helper()
	fs := d.flagSet()
	if err := fs.Parse(args); err != nil {
		d.t.Fatalf("parse %q: %v", args, err)
	}
	return Load(fs, command)
}

// mustLoad is load for a config that must be valid.
func (d *testDir) mustLoad(args []string, command ...string) *Config {
	d.t.Helper()
	c, err := d.load(args, command...)
	if err != nil {
		d.t.Fatalf("Load: unexpected problems:\n%v", err)
	}
	return c
}

// problems loads a config that must be invalid and returns its problems as
// text, one per line, with the test directory left out of paths.
func (d *testDir) problems(args []string, command ...string) []string {
	d.t.Helper()
	_, err := d.load(args, command...)
	var ps Problems
	if !errors.As(err, &ps) {
		d.t.Fatalf("Load: want Problems, got %T %v", err, err)
	}
	lines := strings.Split(ps.Error(), "\n")
	for i := range lines {
		lines[i] = strings.ReplaceAll(lines[i], d.path+"/", "")
	}
	return lines
}

// flagSet returns a flag set with baton's flags, not parsed yet.
func (d *testDir) flagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("baton", pflag.ContinueOnError)
	RegisterFlags(fs)
	return fs
}

// Package forkserver is baton's side of the template protocol of preload
// mode (docs/forkserver.md): for each generation baton starts one template
// process, the worker command's own interpreter running a small fork server
// shipped inside baton (forkserver.py, standard library only), which imports
// the application once and then forks the generation's workers on request.
//
// The package decides whether a worker command can run that way and how
// (Interpreter), installs the fork server (Install), builds the template's
// argv (TemplateArgs), and speaks the protocol over the control socket
// (Conn). It starts no process itself: the template is started like a
// worker, and the workers it forks become baton's children because baton is
// a child subreaper.
package forkserver

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
)

// source is the fork server, written out by Install.
//
//go:embed forkserver.py
var source []byte

// FileName is the name Install gives the fork server in its directory.
const FileName = "forkserver.py"

// ControlFDEnv names the variable that tells the template which fd is its
// control socket (3+L, after the L listeners).
const ControlFDEnv = "BATON_FORKSERVER_FD"

// Source returns the fork server's text.
func Source() []byte { return bytes.Clone(source) }

// Install writes the fork server into dir (baton's private runtime
// directory) and returns its path. The file is replaced atomically, so a
// template starting meanwhile reads either the old or the new text whole,
// and it is left alone when it already holds this baton's text. It is
// readable by all (0644): workers may run as another user than baton.
func Install(dir string) (string, error) {
	path := filepath.Join(dir, FileName)
	if current, err := os.ReadFile(path); err == nil && bytes.Equal(current, source) {
		if err := os.Chmod(path, 0o644); err != nil {
			return "", fmt.Errorf("install the fork server: %w", err)
		}
		return path, nil
	}
	tmp, err := os.CreateTemp(dir, ".forkserver-*.py")
	if err != nil {
		return "", fmt.Errorf("install the fork server in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(source); err != nil {
		tmp.Close()
		return "", fmt.Errorf("install the fork server: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", fmt.Errorf("install the fork server: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("install the fork server: close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("install the fork server: %w", err)
	}
	return path, nil
}

// TemplateArgs is the template's argv: the interpreter with the command's
// interpreter flags (entry.Flags from Interpreter), the installed fork
// server, "--preload MOD" for each module, "--", and the worker command's
// argv exactly as a worker would get it. The template finds the entry
// point in that command itself, as the interpreter would.
func TemplateArgs(interp string, flags []string, script string, preload []string, command []string) []string {
	args := make([]string, 0, 3+len(flags)+2*len(preload)+len(command))
	args = append(args, interp)
	args = append(args, flags...)
	args = append(args, script)
	for _, mod := range preload {
		args = append(args, "--preload", mod)
	}
	args = append(args, "--")
	return append(args, command...)
}

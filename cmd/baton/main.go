// Command baton is a pre-fork process manager for zero-downtime deploys: the
// master binds the listeners once and supervises worker processes that
// inherit them through systemd's LISTEN_FDS protocol.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/baton-pm/baton/internal/cgroup"
	"github.com/baton-pm/baton/internal/demo"
	"github.com/baton-pm/baton/internal/master"
	"github.com/baton-pm/baton/internal/proc"
	"github.com/baton-pm/baton/internal/unlisten"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitCodeError carries a specific exit code out of a cobra command.
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }

// usageError marks bad input from the operator: exit code 2.
func usageError(err error) error { return &exitCodeError{code: 2, err: err} }

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	// The hidden modes are handled before cobra so that nothing parses the
	// worker's own arguments.
	if len(args) > 0 {
		switch args[0] {
		case proc.ShimArg:
			return proc.Shim(args[1:])
		case unlisten.Arg:
			return unlisten.Main(args[1:])
		case cgroup.ProbeArg:
			return 0 // started inside a cgroup to see that it can be
		case master.ReexecCheckArg:
			return upgradeCheck(args[1:])
		case demoWorkerArg:
			if err := demo.Run(); err != nil {
				fmt.Fprintln(os.Stderr, "baton demo worker:", err)
				return 1
			}
			return 0
		}
	}
	root := newRootCommand()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ec *exitCodeError
	if errors.As(err, &ec) {
		fmt.Fprintln(os.Stderr, formatError(ec.err))
		return ec.code
	}
	// cobra's own errors (unknown flag, bad value) are usage errors too.
	fmt.Fprintln(os.Stderr, "baton:", err)
	fmt.Fprintln(os.Stderr, "Run 'baton --help' for usage.")
	return 2
}

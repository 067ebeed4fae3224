package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/baton-pm/baton/internal/config"
	"github.com/baton-pm/baton/internal/master"
)

// upgradeCheck is the hidden mode in which a running master checks, before
// it executes this binary in place, that this binary can take it over:
// args are the state format version the master writes, then the master's
// own arguments. It prints one line, "ok VERSION" or why not, and exits 0
// only when it reads that state version and the configuration loads.
func upgradeCheck(args []string) int {
	if len(args) < 1 {
		fmt.Printf("usage: baton %s STATE_VERSION ARGS... (internal, run by the master)\n", master.ReexecCheckArg)
		return 2
	}
	if v, err := strconv.Atoi(args[0]); err != nil || v != master.ReexecStateVersion {
		fmt.Printf("baton %s reads state version %d, not %s\n", version, master.ReexecStateVersion, args[0])
		return 3
	}
	if rest := args[1:]; len(rest) > 0 && rest[0] == "run" {
		fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
		fs.SetOutput(io.Discard)
		config.RegisterFlags(fs)
		fs.SetInterspersed(false)
		if err := fs.Parse(rest[1:]); err != nil {
			fmt.Printf("baton %s cannot read the master's arguments: %v\n", version, err)
			return 2
		}
		if _, err := config.Load(fs, fs.Args()); err != nil {
			fmt.Printf("baton %s rejects the configuration: %s\n", version, strings.ReplaceAll(err.Error(), "\n", "; "))
			return 2
		}
	}
	fmt.Printf("ok %s\n", version)
	return 0
}

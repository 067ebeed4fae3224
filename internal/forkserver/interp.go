package forkserver

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// EntryKind says how the worker command's interpreter runs its program.
type EntryKind int

// The kinds of entry point; the template runs each in-process as the
// interpreter would, with the __main__ it would give the program.
const (
	Module EntryKind = iota + 1 // python -m MOD
	Script                      // python script.py, or a script whose shebang names python
	Code                        // python -c CODE
)

func (k EntryKind) String() string {
	switch k {
	case Module:
		return "module"
	case Script:
		return "script"
	case Code:
		return "code"
	}
	return fmt.Sprintf("EntryKind(%d)", int(k))
}

// Entry is what a Python worker command runs.
type Entry struct {
	Kind EntryKind
	// Target is the module name, the script's path (as the interpreter
	// gets it: the resolved command path for a shebang script) or the code.
	Target string
	// Args are the program's arguments, sys.argv[1:].
	Args []string
	// Flags are the interpreter options before the target ("-u", "-X",
	// "dev", ...), one per element; the template's interpreter gets them
	// too, so that it imports the application as the worker would.
	Flags []string
}

// pythonName matches the file names of Python interpreters: python,
// python3, python3.11, pypy3.
var pythonName = regexp.MustCompile(`^(python|pypy)[0-9]*(\.[0-9]+)*$`)

// shebangMax is how much of a script the kernel reads for its "#!" line
// (BINPRM_BUF_SIZE since Linux 5.1).
const shebangMax = 256

// Interpreter decides whether the worker command (argv, whose program
// resolved to path) is a Python program, and how the template runs it: a
// Python interpreter with "-m MOD", "-c CODE" or a script and interpreter
// options before them, or a script whose "#!" line names one (Debian's
// /usr/bin/uvicorn, a virtualenv's bin/gunicorn, "#!/usr/bin/env
// python3"). It returns the interpreter to start the template with: path
// itself, the shebang's interpreter, or, for env, the name resolved in
// baton's PATH (see InterpreterIn).
func Interpreter(path string, argv []string) (interp string, entry Entry, err error) {
	return InterpreterIn(path, argv, os.Getenv("PATH"))
}

// InterpreterIn is Interpreter with the PATH ("/usr/local/bin:/usr/bin")
// in which an "#!/usr/bin/env NAME" script's NAME is looked up: pass the
// workers' PATH where it differs from baton's own.
func InterpreterIn(path string, argv []string, pathList string) (interp string, entry Entry, err error) {
	if len(argv) == 0 {
		return "", Entry{}, fmt.Errorf("preload needs a Python worker command; the command is empty")
	}
	if pythonName.MatchString(filepath.Base(argv[0])) || pythonName.MatchString(filepath.Base(path)) {
		entry, err := parsePython(argv)
		return path, entry, err
	}
	interp, argv, err = shebangArgv(path, argv, pathList)
	if err != nil {
		return "", Entry{}, err
	}
	entry, err = parsePython(argv)
	if err != nil {
		return "", Entry{}, fmt.Errorf("%s: %w", path, err)
	}
	if entry.Kind != Script || entry.Target != path {
		return "", Entry{}, fmt.Errorf("preload cannot run %s: its #! line gives the interpreter %s instead of the script itself", path, entry.Kind)
	}
	return interp, entry, nil
}

// shebangArgv reads path's "#!" line and returns the interpreter and the
// argv the kernel would run it with: [interp, optional arg, path, args...];
// for env, [NAME, words of an -S argument..., path, args...].
func shebangArgv(path string, argv []string, pathList string) (string, []string, error) {
	notPython := fmt.Sprintf("preload needs a Python worker command; %q is not a Python interpreter and %s", argv[0], path)
	line, err := shebang(path)
	if err != nil {
		return "", nil, fmt.Errorf("%s cannot be read: %w", notPython, err)
	}
	if line == "" {
		return "", nil, fmt.Errorf("%s has no python shebang", notPython)
	}
	interp, arg, _ := strings.Cut(line, " ")
	arg = strings.TrimSpace(arg)
	if filepath.Base(interp) == "env" {
		return envShebang(notPython, line, arg, path, argv, pathList)
	}
	if !pythonName.MatchString(filepath.Base(interp)) {
		return "", nil, fmt.Errorf("%s is a script for %s (#!%s), not for Python", notPython, interp, line)
	}
	kernelArgv := []string{interp}
	if arg != "" {
		kernelArgv = append(kernelArgv, arg) // one argument, spaces and all, as the kernel passes it
	}
	return interp, append(append(kernelArgv, path), argv[1:]...), nil
}

// envShebang handles "#!/usr/bin/env python3" and "#!/usr/bin/env -S
// python3 -u".
func envShebang(notPython, line, arg, path string, argv []string, pathList string) (string, []string, error) {
	var words []string
	switch {
	case strings.HasPrefix(arg, "-S"):
		words = strings.Fields(strings.TrimPrefix(arg, "-S"))
	case strings.HasPrefix(arg, "-"):
		return "", nil, fmt.Errorf("%s runs env with an option preload does not know (#!%s)", notPython, line)
	case strings.ContainsAny(arg, " \t"):
		return "", nil, fmt.Errorf("%s runs env with one argument, %q, which env takes as a program name (#!%s; use env -S to split it)", notPython, arg, line)
	case arg != "":
		words = []string{arg}
	}
	if len(words) == 0 || !pythonName.MatchString(filepath.Base(words[0])) {
		return "", nil, fmt.Errorf("%s is a script for %s, not for Python", notPython, line)
	}
	interp, err := lookPathIn(words[0], pathList)
	if err != nil {
		return "", nil, fmt.Errorf("%s is a script for %s, and %w", path, line, err)
	}
	return interp, append(append(words, path), argv[1:]...), nil
}

// shebang returns path's "#!" line without "#!" and surrounding blanks, as
// the kernel reads it; "" if it has none.
func shebang(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, shebangMax)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return "", err
	}
	buf = buf[:n]
	if !bytes.HasPrefix(buf, []byte("#!")) {
		return "", nil
	}
	line, _, _ := bytes.Cut(buf[2:], []byte("\n"))
	line = bytes.ReplaceAll(line, []byte("\t"), []byte(" "))
	return strings.TrimSpace(string(line)), nil
}

// lookPathIn finds an executable name in pathList, as env would.
func lookPathIn(name, pathList string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, dir := range filepath.SplitList(pathList) {
		if dir == "" {
			dir = "."
		}
		candidate := filepath.Join(dir, name)
		if st, err := os.Stat(candidate); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return candidate, nil
		}
	}
	return "", fmt.Errorf("%q is not in PATH (%s)", name, pathList)
}

// parsePython reads a Python interpreter's argv as the interpreter does:
// options (clustered "-uO", valued "-X dev", "-Xdev", "-W error"), then
// "-m MOD", "-c CODE" or a script, whose arguments follow.
func parsePython(argv []string) (Entry, error) {
	var flags []string
	args := argv[1:]
	i := 0
	for ; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			i++
			break
		}
		if arg == "-" || !strings.HasPrefix(arg, "-") {
			break
		}
		if strings.HasPrefix(arg, "--") {
			n, err := longOption(argv[0], args[i:])
			if err != nil {
				return Entry{}, err
			}
			flags = append(flags, args[i:i+n]...)
			i += n - 1
			continue
		}
		for j := 1; j < len(arg); j++ {
			opt, rest := arg[j], arg[j+1:]
			value, tail, hasValue := rest, args[i+1:], rest != ""
			if !hasValue && i+1 < len(args) {
				value, tail, hasValue = args[i+1], args[i+2:], true
			}
			switch {
			case opt == 'm' || opt == 'c':
				if !hasValue {
					return Entry{}, fmt.Errorf("%q: option -%c needs an argument", argv[0], opt)
				}
				kind := Module
				if opt == 'c' {
					kind = Code
				}
				return Entry{Kind: kind, Target: value, Args: clone(tail), Flags: flags}, nil
			case opt == 'X' || opt == 'W':
				if !hasValue {
					return Entry{}, fmt.Errorf("%q: option -%c needs an argument", argv[0], opt)
				}
				flags = append(flags, "-"+string(opt), value)
				if rest == "" {
					i++
				}
				j = len(arg)
			case strings.IndexByte("bBdEIOPqsSuvR", opt) >= 0:
				flags = append(flags, "-"+string(opt))
			default:
				return Entry{}, refusedOption(argv[0], opt)
			}
		}
	}
	if i >= len(args) || args[i] == "-" {
		return Entry{}, fmt.Errorf("preload cannot run %q without a script, -m MODULE or -c CODE: it would read its program from stdin", argv[0])
	}
	return Entry{Kind: Script, Target: args[i], Args: clone(args[i+1:]), Flags: flags}, nil
}

// longOption checks a "--" option and says how many arguments it takes up.
func longOption(interp string, args []string) (int, error) {
	switch args[0] {
	case "--check-hash-based-pycs":
		if len(args) < 2 {
			return 0, fmt.Errorf("%q: option --check-hash-based-pycs needs an argument", interp)
		}
		return 2, nil
	case "--help", "--version", "--help-env", "--help-xoptions", "--help-all":
		return 0, fmt.Errorf("preload cannot run %q with %s: it prints and exits, it runs no server", interp, args[0])
	}
	return 0, fmt.Errorf("%q: unknown interpreter option %s", interp, args[0])
}

func refusedOption(interp string, opt byte) error {
	switch opt {
	case 'i':
		return fmt.Errorf("preload cannot run %q with -i: it starts an interactive interpreter, not a server", interp)
	case 'x':
		return fmt.Errorf("preload cannot run %q with -x (skip the script's first line): the template does not do that", interp)
	case 'h', '?', 'V':
		return fmt.Errorf("preload cannot run %q with -%c: it prints and exits, it runs no server", interp, opt)
	}
	return fmt.Errorf("%q: unknown interpreter option -%c", interp, opt)
}

func clone(s []string) []string { return append([]string{}, s...) }

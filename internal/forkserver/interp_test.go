package forkserver

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestInterpreter(t *testing.T) {
	t.Parallel()
	requireFile(t, "/usr/bin/uvicorn", "uvicorn")
	requireFile(t, "/usr/bin/gunicorn", "gunicorn")
	requireFile(t, "/usr/bin/node", "nodejs")
	requireFile(t, debianPython, "python3")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"env.py":       "#!/usr/bin/env python3\nprint(1)\n",
		"env-s.py":     "#!/usr/bin/env -S python3 -u -X dev\n",
		"env-space.py": "#!/usr/bin/env python3 -u\n",
		"env-opt.py":   "#!/usr/bin/env -i python3\n",
		"flag.py":      "#! \t/usr/bin/python3 -u  \n",
		"flags.py":     "#!/usr/bin/python3 -u -O\n",
		"dash-m.py":    "#!/usr/bin/python3 -m http.server\n",
		"shell.sh":     "#!/bin/sh\nexec python3 app.py\n",
		"noshebang.py": "print(1)\n",
		"pypy.py":      "#!/opt/pypy/bin/pypy3\n",
	})
	venvPython := filepath.Join(dir, "venv", "bin", "python")
	if err := os.MkdirAll(filepath.Dir(venvPython), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(debianPython, venvPython); err != nil {
		t.Fatal(err)
	}
	p := func(name string) string { return filepath.Join(dir, name) }

	for _, tc := range []struct {
		name    string
		path    string
		argv    []string
		interp  string
		entry   Entry
		wantErr string // a part of the error; "" for none
	}{
		{name: "module", path: debianPython, argv: []string{"python3", "-m", "uvicorn", "--fd", "3", "app:app"},
			interp: debianPython, entry: Entry{Kind: Module, Target: "uvicorn", Args: []string{"--fd", "3", "app:app"}}},
		{name: "flags before a script", path: debianPython, argv: []string{"python3", "-u", "-X", "dev", "-W", "error::DeprecationWarning", "app.py", "-u"},
			interp: debianPython, entry: Entry{Kind: Script, Target: "app.py", Args: []string{"-u"}, Flags: []string{"-u", "-X", "dev", "-W", "error::DeprecationWarning"}}},
		{name: "clustered and attached", path: debianPython, argv: []string{"/usr/bin/python3", "-uO", "-Xdev", "-mhttp.server", "8000"},
			interp: debianPython, entry: Entry{Kind: Module, Target: "http.server", Args: []string{"8000"}, Flags: []string{"-u", "-O", "-X", "dev"}}},
		{name: "cluster ending in m", path: debianPython, argv: []string{"python3", "-Bm", "app", "x"},
			interp: debianPython, entry: Entry{Kind: Module, Target: "app", Args: []string{"x"}, Flags: []string{"-B"}}},
		{name: "code", path: debianPython, argv: []string{"python3", "-c", "import app; app.main()", "a"},
			interp: debianPython, entry: Entry{Kind: Code, Target: "import app; app.main()", Args: []string{"a"}}},
		{name: "double dash", path: "/usr/bin/python3.11", argv: []string{"python3.11", "-s", "--", "-odd.py", "x"},
			interp: "/usr/bin/python3.11", entry: Entry{Kind: Script, Target: "-odd.py", Args: []string{"x"}, Flags: []string{"-s"}}},
		{name: "long option", path: debianPython, argv: []string{"python3", "--check-hash-based-pycs", "never", "app.py"},
			interp: debianPython, entry: Entry{Kind: Script, Target: "app.py", Args: []string{}, Flags: []string{"--check-hash-based-pycs", "never"}}},
		{name: "virtualenv python", path: venvPython, argv: []string{venvPython, "app.py"},
			interp: venvPython, entry: Entry{Kind: Script, Target: "app.py", Args: []string{}}},
		{name: "debian uvicorn", path: "/usr/bin/uvicorn", argv: []string{"uvicorn", "--fd", "3", "app:app"},
			interp: debianPython, entry: Entry{Kind: Script, Target: "/usr/bin/uvicorn", Args: []string{"--fd", "3", "app:app"}}},
		{name: "debian gunicorn", path: "/usr/bin/gunicorn", argv: []string{"gunicorn", "-b", "fd://3", "app:app"},
			interp: debianPython, entry: Entry{Kind: Script, Target: "/usr/bin/gunicorn", Args: []string{"-b", "fd://3", "app:app"}}},
		{name: "env shebang", path: p("env.py"), argv: []string{"env.py", "x"},
			interp: debianPython, entry: Entry{Kind: Script, Target: p("env.py"), Args: []string{"x"}}},
		{name: "env -S shebang", path: p("env-s.py"), argv: []string{"env-s.py"},
			interp: debianPython, entry: Entry{Kind: Script, Target: p("env-s.py"), Args: []string{}, Flags: []string{"-u", "-X", "dev"}}},
		{name: "shebang with a flag", path: p("flag.py"), argv: []string{"flag.py"},
			interp: debianPython, entry: Entry{Kind: Script, Target: p("flag.py"), Args: []string{}, Flags: []string{"-u"}}},
		{name: "pypy shebang", path: p("pypy.py"), argv: []string{"pypy.py"},
			interp: "/opt/pypy/bin/pypy3", entry: Entry{Kind: Script, Target: p("pypy.py"), Args: []string{}}},

		{name: "node", path: "/usr/bin/node", argv: []string{"node", "server.js"},
			wantErr: `preload needs a Python worker command; "node" is not a Python interpreter and /usr/bin/node has no python shebang`},
		{name: "shell script", path: p("shell.sh"), argv: []string{"shell.sh"},
			wantErr: `"shell.sh" is not a Python interpreter and ` + p("shell.sh") + ` is a script for /bin/sh`},
		{name: "no shebang", path: p("noshebang.py"), argv: []string{"noshebang.py"}, wantErr: "has no python shebang"},
		{name: "missing file", path: p("missing"), argv: []string{"missing"}, wantErr: "cannot be read"},
		{name: "shebang with two flags", path: p("flags.py"), argv: []string{"flags.py"}, wantErr: `unknown interpreter option - `},
		{name: "shebang with -m", path: p("dash-m.py"), argv: []string{"dash-m.py"}, wantErr: "gives the interpreter module instead of the script"},
		{name: "env with one spaced argument", path: p("env-space.py"), argv: []string{"env-space.py"}, wantErr: `which env takes as a program name`},
		{name: "env option", path: p("env-opt.py"), argv: []string{"env-opt.py"}, wantErr: "runs env with an option preload does not know"},
		{name: "stdin", path: debianPython, argv: []string{"python3"}, wantErr: "read its program from stdin"},
		{name: "dash", path: debianPython, argv: []string{"python3", "-u", "-"}, wantErr: "read its program from stdin"},
		{name: "interactive", path: debianPython, argv: []string{"python3", "-i", "app.py"}, wantErr: "-i: it starts an interactive interpreter"},
		{name: "version", path: debianPython, argv: []string{"python3", "-V"}, wantErr: "prints and exits"},
		{name: "help", path: debianPython, argv: []string{"python3", "--help"}, wantErr: "prints and exits"},
		{name: "skip first line", path: debianPython, argv: []string{"python3", "-x", "app.py"}, wantErr: "-x"},
		{name: "unknown option", path: debianPython, argv: []string{"python3", "-Z", "app.py"}, wantErr: "unknown interpreter option -Z"},
		{name: "-m without a module", path: debianPython, argv: []string{"python3", "-u", "-m"}, wantErr: "option -m needs an argument"},
		{name: "-X without a value", path: debianPython, argv: []string{"python3", "-X"}, wantErr: "option -X needs an argument"},
		{name: "empty", path: debianPython, argv: nil, wantErr: "the command is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			interp, entry, err := InterpreterIn(tc.path, tc.argv, "/usr/bin:/bin")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v; want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if interp != tc.interp || entry.Kind != tc.entry.Kind || entry.Target != tc.entry.Target ||
				!slices.Equal(entry.Args, tc.entry.Args) || !slices.Equal(entry.Flags, tc.entry.Flags) {
				t.Errorf("got %q %+v; want %q %+v", interp, entry, tc.interp, tc.entry)
			}
		})
	}
}

// TestInterpreterEnvPath: an env shebang's interpreter is looked up in the
// PATH given, and its absence is an error that names it.
func TestInterpreterEnvPath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"app": "#!/usr/bin/env python3.99\n", "python3.99": "#!/bin/sh\n"})
	interp, _, err := InterpreterIn(filepath.Join(dir, "app"), []string{"app"}, "/nonexistent:"+dir)
	if err != nil || interp != filepath.Join(dir, "python3.99") {
		t.Errorf("got %q, %v; want %s", interp, err, filepath.Join(dir, "python3.99"))
	}
	_, _, err = InterpreterIn(filepath.Join(dir, "app"), []string{"app"}, "/usr/bin")
	if err == nil || !strings.Contains(err.Error(), `"python3.99" is not in PATH (/usr/bin)`) {
		t.Errorf("error %v; want python3.99 not in PATH", err)
	}
}

func TestTemplateArgs(t *testing.T) {
	got := TemplateArgs("/usr/bin/python3", []string{"-u", "-X", "dev"}, "/run/baton/forkserver.py",
		[]string{"proj.asgi", "proj.tasks"}, []string{"uvicorn", "--fd", "3", "proj.asgi:app"})
	want := []string{"/usr/bin/python3", "-u", "-X", "dev", "/run/baton/forkserver.py",
		"--preload", "proj.asgi", "--preload", "proj.tasks", "--", "uvicorn", "--fd", "3", "proj.asgi:app"}
	if !slices.Equal(got, want) {
		t.Errorf("TemplateArgs = %q\nwant %q", got, want)
	}
}

// TestInstall: the fork server is written whole, readable by all, and
// left alone when it is already there; a changed file is replaced.
func TestInstall(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path, err := Install(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o644 || path != filepath.Join(dir, FileName) {
		t.Fatalf("installed %s: %v %v; want %s mode 0644", path, st.Mode(), err, filepath.Join(dir, FileName))
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, Source()) {
		t.Fatal("installed text differs from the embedded one")
	}
	if _, err := Install(dir); err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(path)
	if !os.SameFile(st, st2) {
		t.Error("a second Install replaced an identical file")
	}
	if err := os.WriteFile(path, []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, Source()) {
		t.Error("Install left a stale fork server in place")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("Install left %d files in %s; want 1", len(entries), dir)
	}
	if _, err := Install(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "install the fork server") {
		t.Errorf("Install into a missing directory: %v", err)
	}
}

// TestForkServerIsPython39 keeps the fork server within the oldest Python
// it supports, and standard library only.
func TestForkServerIsPython39(t *testing.T) {
	t.Parallel()
	requireFile(t, debianPython, "python3")
	check := `import ast, sys
src = sys.stdin.read()
tree = ast.parse(src, feature_version=(3, 9))
stdlib = set(sys.stdlib_module_names)
for node in ast.walk(tree):
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
        [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
    for name in names:
        if name.split(".")[0] not in stdlib:
            sys.exit("imports %s, which is not in the standard library" % name)
`
	cmd := exec.Command(debianPython, "-c", check)
	cmd.Stdin = bytes.NewReader(Source())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("forkserver.py: %v\n%s", err, out)
	}
}

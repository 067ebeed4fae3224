package config

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/BurntSushi/toml"
)

// MaxFileSize is the largest config file baton reads: real ones are a few
// hundred bytes, and a reload must not make the master read without end
// (a config symlinked to /dev/zero, or a runaway generator).
const MaxFileSize = 1 << 20

// readConfigText reads the config file at path, which must be a regular
// file (a symlink to one is fine) of at most MaxFileSize bytes. Anything
// else is refused before it is read from: a FIFO would block the reader
// until a writer came, and /dev/zero never ends. Its errors say what the
// file is and what was expected, without the path (the problem names it).
func readConfigText(path string) ([]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, unwrapPath(err)
	}
	if err := checkConfigFile(info); err != nil {
		return nil, err
	}
	// O_NONBLOCK: should the path be swapped for a FIFO after the Stat,
	// opening it must not wait for a writer. The opened file is checked
	// again, and it is what is read.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, unwrapPath(err)
	}
	defer f.Close()
	return readOpened(f)
}

// readOpened checks the opened config file f as readConfigText checked its
// path (the path may have changed in between) and reads it, within the
// limit.
func readOpened(f *os.File) ([]byte, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, unwrapPath(err)
	}
	if err := checkConfigFile(info); err != nil {
		return nil, err
	}
	// The size can have grown since, or lie (files in /proc say 0).
	text, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, unwrapPath(err)
	}
	if len(text) > MaxFileSize {
		return nil, tooLarge(-1)
	}
	return text, nil
}

// checkConfigFile refuses a config file that is not a regular file of at
// most MaxFileSize bytes.
func checkConfigFile(info fs.FileInfo) error {
	if !info.Mode().IsRegular() {
		return fmt.Errorf("a config file must be a regular file (or a symlink to one); this is %s", fileKind(info.Mode()))
	}
	if info.Size() > MaxFileSize {
		return tooLarge(info.Size())
	}
	return nil
}

// tooLarge says a config file is over the limit; size is -1 when unknown.
func tooLarge(size int64) error {
	if size < 0 {
		return fmt.Errorf("a config file may be at most 1 MiB (%d bytes); this one is larger", MaxFileSize)
	}
	return fmt.Errorf("a config file may be at most 1 MiB (%d bytes); this one is %d bytes", MaxFileSize, size)
}

// fileKind names the type of a file that is not a regular one.
func fileKind(mode fs.FileMode) string {
	switch {
	case mode.IsDir():
		return "a directory"
	case mode&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case mode&fs.ModeSocket != 0:
		return "a unix socket"
	case mode&fs.ModeCharDevice != 0:
		return "a character device"
	case mode&fs.ModeDevice != 0:
		return "a block device"
	case mode&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return fmt.Sprintf("a file of another kind (mode %s)", mode)
}

// tomlFile is a parsed config file whose keys can be read one at a time,
// each with the line it is defined on.
type tomlFile struct {
	path string
	md   toml.MetaData
	top  map[string]toml.Primitive // top-level keys, not decoded yet
}

// fileKey is one top-level key of a file, decoded.
type fileKey struct {
	name  string
	value any // as the TOML decoder gives it, see setting
	line  int
	prim  toml.Primitive
}

// readFile reads and parses a config file. A problem here is final: with no
// file, or no syntax, no key can be checked.
func readFile(path string) (*tomlFile, *Problem) {
	text, err := readConfigText(path)
	if err != nil {
		return nil, &Problem{File: path, Msg: "cannot read the config file: " + err.Error()}
	}
	f := &tomlFile{path: path}
	f.md, err = toml.Decode(string(text), &f.top)
	if err != nil {
		var parseErr toml.ParseError
		if errors.As(err, &parseErr) {
			return nil, &Problem{File: path, Line: parseErr.Position.Line, Msg: parseErr.Message}
		}
		return nil, &Problem{File: path, Msg: err.Error()}
	}
	return f, nil
}

// keys returns the file's top-level keys in the order of their lines.
func (f *tomlFile) keys() []fileKey {
	list := make([]fileKey, 0, len(f.top))
	for name, prim := range f.top {
		value, line := f.decode(prim)
		list = append(list, fileKey{name: name, value: value, line: line, prim: prim})
	}
	slices.SortFunc(list, func(a, b fileKey) int {
		return cmp.Or(cmp.Compare(a.line, b.line), strings.Compare(a.name, b.name))
	})
	return list
}

// entryLine returns the line of the entry named name in the table prim.
func (f *tomlFile) entryLine(prim toml.Primitive, name string) int {
	var entries map[string]toml.Primitive
	if f.md.PrimitiveDecode(prim, &entries) != nil {
		return 0
	}
	_, line := f.decode(entries[name])
	return line
}

// capture receives a value from the TOML decoder undecoded, then stops the
// decoder on purpose: see decode.
type capture struct{ value any }

var errCaptured = errors.New("captured")

func (c *capture) UnmarshalTOML(value any) error {
	c.value = value
	return errCaptured
}

// decode returns the value of prim as the decoder's plain Go types, and the
// line its key is defined on (0 if unknown).
//
// BurntSushi/toml keeps each key's position but has no API for it. It does
// return an Unmarshaler's error as a ParseError positioned at the key being
// decoded, so capture's deliberate error gives us the line. This is exact
// where scanning the text for "key =" is not: quoted keys, dotted keys
// (env.PORT = ...), [env] tables, and "key =" inside a multi-line string.
// A table that only exists through its sub-tables ([other.sub] makes
// "other") has no position of its own; it gets its first entry's line.
func (f *tomlFile) decode(prim toml.Primitive) (value any, line int) {
	var c capture
	err := f.md.PrimitiveDecode(prim, &c)
	var parseErr toml.ParseError
	if errors.As(err, &parseErr) {
		line = parseErr.Position.Line
	}
	if line == 0 {
		line = f.firstEntryLine(prim)
	}
	return c.value, line
}

// firstEntryLine returns the smallest line of the entries of the table
// prim, or 0 if it is not a table.
func (f *tomlFile) firstEntryLine(prim toml.Primitive) int {
	var entries map[string]toml.Primitive
	if f.md.PrimitiveDecode(prim, &entries) != nil {
		return 0
	}
	first := 0
	for _, entry := range entries {
		if _, line := f.decode(entry); line > 0 && (first == 0 || line < first) {
			first = line
		}
	}
	return first
}

package config

import (
	"cmp"
	"errors"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

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
	text, err := os.ReadFile(path)
	if err != nil {
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			err = pathErr.Err // the path is already in the problem
		}
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

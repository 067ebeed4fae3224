package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"
)

// configFlag is the flag naming the config file.
const configFlag = "config"

// RegisterFlags adds -c/--config and a flag for every key that has one to fs.
//
// The flags only collect their text: Load parses it, so that every bad flag
// is reported together with the file's problems, in the same words, instead
// of flag parsing stopping at the first.
func RegisterFlags(fs *pflag.FlagSet) {
	fs.StringP(configFlag, "c", "", "read settings from the TOML `FILE` (flags override it)")
	for i := range keys {
		k := &keys[i]
		if k.flag == flagNone {
			continue
		}
		v := &flagValue{repeat: k.flag == flagRepeat}
		f := fs.VarPF(v, k.flagName(), k.short, k.usage)
		f.DefValue = k.def // for --help; Load applies defaults itself
		if k.boolean {
			f.NoOptDefVal = "true"
		}
	}
}

// flagValue is a pflag.Value that keeps the text it is given.
type flagValue struct {
	args   []string
	repeat bool
}

func (v *flagValue) Set(s string) error {
	if !v.repeat {
		v.args = v.args[:0]
	}
	v.args = append(v.args, s)
	return nil
}

func (v *flagValue) String() string { return strings.Join(v.args, ",") }

// Type is what --help shows when the usage names no argument. It is not
// "string", so pflag shows defaults unquoted: (default 30s).
func (v *flagValue) Type() string { return "value" }

// Load builds the effective configuration: defaults, then the file given
// with -c (if any), then the flags of fs that were given, then command (if
// not empty). fs may be nil. It checks everything and returns every problem
// found as Problems.
func Load(fs *pflag.FlagSet, command []string) (*Config, error) {
	l := newLoader()
	if path := flagText(fs, configFlag); path != "" {
		f, p := readFile(path)
		if p != nil {
			return nil, Problems{*p}
		}
		l.cfg.source = path
		l.applyFile(f)
		// Entries of a table (env) come in name order; show all by line.
		slices.SortStableFunc(l.problems, func(a, b Problem) int { return cmp.Compare(a.Line, b.Line) })
	}
	l.applyFlags(fs)
	if len(command) > 0 {
		l.apply(lookupKey(commandKey), origin{}, command)
	}
	l.check()
	if len(l.problems) > 0 {
		return nil, l.problems
	}
	l.warn()
	return l.cfg, nil
}

// loader merges the layers of one Load.
type loader struct {
	cfg      *Config
	problems Problems
	from     map[string]origin // where each key's current value came from
	failed   map[string]bool   // keys whose last layer had a problem
}

// newLoader starts from the defaults.
func newLoader() *loader {
	l := &loader{cfg: &Config{}, from: map[string]origin{}, failed: map[string]bool{}}
	for i := range keys {
		k := &keys[i]
		if errs := k.setting(l.cfg).fromFlags(k.defaults()); errs != nil {
			panic(fmt.Sprintf("config: bad default for %s: %v", k.name, errs))
		}
	}
	return l
}

// apply sets k from flag text (or the command), reporting problems at o.
func (l *loader) apply(k *key, o origin, args []string) {
	errs := k.setting(l.cfg).fromFlags(args)
	l.from[k.name], l.failed[k.name] = o, errs != nil
	for _, err := range errs {
		l.problems = append(l.problems, o.problem(k.name, err.Error()))
	}
}

// applyFile sets every key of the file and reports unknown ones.
func (l *loader) applyFile(f *tomlFile) {
	for _, fk := range f.keys() {
		o := origin{file: f.path, line: fk.line}
		k := lookupKey(fk.name)
		if k == nil {
			l.problems = append(l.problems, Problem{File: f.path, Line: fk.line, Msg: unknownKey(fk.name)})
			continue
		}
		errs := k.setting(l.cfg).fromTOML(fk.value)
		l.from[k.name], l.failed[k.name] = o, errs != nil
		for _, err := range errs {
			p := o.problem(k.name, err.Error())
			if e, ok := err.(entryError); ok {
				p.Key = toml.Key{k.name, e.entry}.String()
				p.Line = cmp.Or(f.entryLine(fk.prim, e.entry), fk.line)
			}
			l.problems = append(l.problems, p)
		}
	}
}

func unknownKey(name string) string {
	msg := fmt.Sprintf("unknown key %q", name)
	if s := suggest(name, keyNames()); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	return msg
}

// applyFlags sets every key whose flag was given.
func (l *loader) applyFlags(fs *pflag.FlagSet) {
	if fs == nil {
		return
	}
	for i := range keys {
		k := &keys[i]
		f := fs.Lookup(k.flagName())
		if k.flag == flagNone || f == nil || !f.Changed {
			continue
		}
		l.apply(k, origin{flag: k.flagName()}, flagArgs(f))
	}
}

// flagArgs returns a flag's values; a flag not made by RegisterFlags has one.
func flagArgs(f *pflag.Flag) []string {
	if v, ok := f.Value.(*flagValue); ok {
		return v.args
	}
	return []string{f.Value.String()}
}

// flagText returns the text of a flag of fs, "" if there is none.
func flagText(fs *pflag.FlagSet, name string) string {
	if fs == nil {
		return ""
	}
	if f := fs.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

// check runs the keys' checks on the merged config. A key whose last value
// had a problem is not checked (its field holds an older value), nor is one
// that needs such a key.
func (l *loader) check() {
	for i := range keys {
		k := &keys[i]
		if k.check == nil || l.failed[k.name] || slices.ContainsFunc(k.needs, func(n string) bool { return l.failed[n] }) {
			continue
		}
		if err := k.check(l.cfg); err != nil {
			l.problems = append(l.problems, l.from[k.name].problem(k.name, err.Error()))
		}
	}
}

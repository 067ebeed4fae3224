package config

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// The settings of this file hold more than one value: the bind list, the
// command and the env table.

// stringList takes a TOML array of strings, saying which item is not one.
func stringList(v []any) ([]string, []error) {
	var list []string
	var errs []error
	for i, item := range v {
		s, ok := item.(string)
		if !ok {
			errs = append(errs, fmt.Errorf("item %d: %w", i+1, expected("a string", item)))
		}
		list = append(list, s)
	}
	return list, errs
}

// bindsSetting is the bind list. Flags replace the file's list: listeners
// given on the command line are the ones wanted, not extra ones.
type bindsSetting struct{ field *[]Bind }

func (s bindsSetting) fromTOML(v any) []error {
	switch v := v.(type) {
	case string: // one address, as Gunicorn's config files often say
		return s.set([]string{v})
	case []any:
		raws, errs := stringList(v)
		if errs != nil {
			return errs
		}
		return s.set(raws)
	}
	return []error{expected(`an array of addresses, like ["127.0.0.1:8000"]`, v)}
}

func (s bindsSetting) fromFlags(args []string) []error { return s.set(args) }

func (s bindsSetting) set(raws []string) []error {
	binds, errs := parseBinds(raws)
	if errs == nil {
		*s.field = binds
	}
	return errs
}

func (s bindsSetting) toTOML() string {
	raws := make([]string, len(*s.field))
	for i, b := range *s.field {
		raws[i] = b.Raw
	}
	return quoteList(raws)
}

// commandSetting is the worker command. Its program is resolved later, by
// resolveCommand, once chdir and env are known.
type commandSetting struct{ field *[]string }

const commandExample = `["uvicorn", "--fd", "3", "app:app"]`

func (s commandSetting) fromTOML(v any) []error {
	list, ok := v.([]any)
	if !ok {
		return []error{expected("an array of strings, like "+commandExample, v)}
	}
	args, errs := stringList(list)
	if errs != nil {
		return errs
	}
	if len(args) == 0 {
		return []error{fmt.Errorf("expected at least the program to run, like %s, got []", commandExample)}
	}
	return s.fromFlags(args)
}

func (s commandSetting) fromFlags(args []string) []error {
	if len(args) > 0 && args[0] == "" {
		return []error{errors.New("the program to run (the first word) is empty")}
	}
	for _, a := range args {
		if _, err := noNUL(a); err != nil {
			return []error{err}
		}
	}
	*s.field = slices.Clone(args)
	return nil
}

func (s commandSetting) toTOML() string { return quoteList(*s.field) }

// envSetting is the workers' extra environment. Flags add to the file's
// table: -e DEBUG=1 should not throw away the file's DATABASE_URL.
type envSetting struct{ field *map[string]string }

// envName is a portable environment variable name.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// reservedEnv is set by baton for each worker; a value from the config
// would either be overwritten or break the protocol.
var reservedEnv = map[string]string{
	"LISTEN_PID":     "baton sets LISTEN_PID itself, to each worker's pid",
	"LISTEN_FDS":     "baton sets LISTEN_FDS itself, to the number of binds",
	"LISTEN_FDNAMES": "baton sets LISTEN_FDNAMES itself, to the bind names",
	"NOTIFY_SOCKET":  "baton sets NOTIFY_SOCKET itself, to a socket of its own for each worker",
}

// An entryError is a problem with one entry of a table (env.PORT), which the
// file has on a line of its own.
type entryError struct {
	entry string
	err   error
}

func (e entryError) Error() string { return e.err.Error() }

func (s envSetting) fromTOML(v any) []error {
	table, ok := v.(map[string]any)
	if !ok {
		return []error{expected(`a table of NAME = "value"`, v)}
	}
	env := map[string]string{}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(table)) {
		value, ok := table[name].(string)
		err := checkEnvName(name)
		if err == nil && !ok {
			err = expected("a string", table[name])
		}
		if err == nil {
			_, err = noNUL(value)
		}
		if err != nil {
			errs = append(errs, entryError{name, err})
		}
		env[name] = value
	}
	if errs != nil {
		return errs
	}
	*s.field = env
	return nil
}

func (s envSetting) fromFlags(args []string) []error {
	env := maps.Clone(*s.field)
	if env == nil {
		env = map[string]string{}
	}
	var errs []error
	for _, arg := range args {
		name, value, ok := strings.Cut(arg, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("expected NAME=VALUE, got %q", arg))
			continue
		}
		if err := checkEnvName(name); err != nil {
			errs = append(errs, fmt.Errorf("%q: %w", arg, err))
			continue
		}
		if _, err := noNUL(value); err != nil {
			errs = append(errs, err)
			continue
		}
		env[name] = value
	}
	if errs != nil {
		return errs
	}
	*s.field = env
	return nil
}

func checkEnvName(name string) error {
	if why, ok := reservedEnv[name]; ok {
		return fmt.Errorf("%s: remove it from env", why)
	}
	if !envName.MatchString(name) {
		return fmt.Errorf("%q is not a valid environment variable name: expected letters, digits and _, not starting with a digit", name)
	}
	return nil
}

func (s envSetting) toTOML() string {
	env := *s.field
	entries := make([]string, 0, len(env))
	for _, name := range slices.Sorted(maps.Keys(env)) {
		entries = append(entries, name+" = "+quote(env[name]))
	}
	if len(entries) == 0 {
		return "{}"
	}
	return "{ " + strings.Join(entries, ", ") + " }"
}

// pathsSetting is a list of strings (paths or patterns): a TOML array, or
// a repeatable flag that replaces the file's list.
type pathsSetting struct{ field *[]string }

func (s pathsSetting) fromTOML(v any) []error {
	list, ok := v.([]any)
	if !ok {
		return []error{expected(`an array of strings, like ["app/", "templates/"]`, v)}
	}
	items, errs := stringList(list)
	if errs != nil {
		return errs
	}
	return s.fromFlags(items)
}

func (s pathsSetting) fromFlags(items []string) []error {
	for _, p := range items {
		if _, err := noNUL(p); err != nil {
			return []error{err}
		}
	}
	*s.field = slices.Clone(items)
	return nil
}

func (s pathsSetting) toTOML() string { return quoteList(*s.field) }

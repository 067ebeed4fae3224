package config

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// A setting is one Config field as the outside sees it: set from a TOML
// value or from flag text, and written back as TOML. Setters report every
// problem they find and leave the field unchanged if there is any.
//
// TOML values come as BurntSushi/toml decodes into an interface: string,
// int64, float64, bool, []any, map[string]any, []map[string]any or a
// time.Time. Taking them raw lets each setting say exactly what it expected
// and what it got, instead of the decoder's "incompatible types".
type setting interface {
	fromTOML(v any) []error
	// fromFlags takes the values of the setting's flag in command-line order
	// (several only for repeatable flags), or the default, or the command.
	fromFlags(args []string) []error
	toTOML() string
}

// scalar is a setting holding one value of type T.
type scalar[T any] struct {
	field  *T
	parse  func(s string) (T, error) // flag text, and TOML strings unless decode says otherwise
	decode func(v any) (T, error)    // TOML value; nil: a string, given to parse
	format func(T) string            // TOML literal
	what   string                    // what the TOML value must be when decode is nil, for "expected ..., got ..."
}

func (s scalar[T]) fromTOML(v any) []error {
	if s.decode != nil {
		return s.set(s.decode(v))
	}
	str, ok := v.(string)
	if !ok {
		return []error{expected(s.what, v)}
	}
	return s.set(s.parse(str))
}

func (s scalar[T]) fromFlags(args []string) []error {
	if len(args) == 0 {
		return nil
	}
	// Only the last one counts, as with any flag given twice.
	return s.set(s.parse(args[len(args)-1]))
}

func (s scalar[T]) set(x T, err error) []error {
	if err != nil {
		return []error{err}
	}
	*s.field = x
	return nil
}

func (s scalar[T]) toTOML() string { return s.format(*s.field) }

// expected says that a TOML value v is not what was wanted.
func expected(what string, v any) error {
	return fmt.Errorf("expected %s, got %s", what, describe(v))
}

// describe names a TOML value's type, with the value itself when short.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("a string (%q)", v)
	case int64:
		return fmt.Sprintf("an integer (%d)", v)
	case float64:
		return fmt.Sprintf("a float (%s)", formatFloat(v))
	case bool:
		return fmt.Sprintf("a boolean (%t)", v)
	case []any:
		return "an array"
	case []map[string]any:
		return "an array of tables"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a datetime"
	}
	return fmt.Sprintf("a %T", v)
}

// formatFloat writes f so that it reads as a float: 2.0, not 2.
func formatFloat(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if strings.Trim(s, "-0123456789") == "" {
		s += ".0"
	}
	return s
}

// intSetting is an integer of at least min.
func intSetting(p *int, min int) setting {
	return boundedInt(p, min, 0, "")
}

// workerCountSetting is an integer from min to control.MaxWorkers, the
// ceiling on the number of worker processes (workers, max_surge).
func workerCountSetting(p *int, min int) setting {
	return boundedInt(p, min, control.MaxWorkers, "baton's ceiling on worker processes")
}

// boundedInt is an integer of at least min and, if max > 0, at most max;
// why says where max comes from.
func boundedInt(p *int, min, max int, why string) setting {
	inRange := func(n int64) (int, error) {
		switch {
		case n < int64(min):
			return 0, fmt.Errorf("expected an integer ≥ %d, got %d", min, n)
		case max > 0 && n > int64(max):
			return 0, fmt.Errorf("expected an integer ≤ %d (%s), got %d", max, why, n)
		}
		return int(n), nil
	}
	return scalar[int]{
		field: p,
		parse: func(s string) (int, error) {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("expected an integer, got %q", s)
			}
			return inRange(n)
		},
		decode: func(v any) (int, error) {
			n, ok := v.(int64)
			if !ok {
				return 0, expected("an integer", v)
			}
			return inRange(n)
		},
		format: strconv.Itoa,
	}
}

// textSetting is free text: a path, or "" for none. Only NUL is refused:
// no path, argument or environment value can hold one.
func textSetting(p *string) setting {
	return scalar[string]{field: p, parse: noNUL, format: quote, what: "a string"}
}

func noNUL(s string) (string, error) {
	if strings.ContainsRune(s, 0) {
		return "", fmt.Errorf("%q contains a NUL byte", s)
	}
	return s, nil
}

// choiceSetting is one of a few words.
// cgroupSetting is "auto", "off" or an absolute cgroup path.
func cgroupSetting(p *string) setting {
	return scalar[string]{
		field: p,
		parse: func(s string) (string, error) {
			if s == "auto" || s == "off" || (strings.HasPrefix(s, "/") && !strings.ContainsRune(s, 0) && !slices.Contains(strings.Split(s, "/"), "..")) {
				return s, nil
			}
			return "", fmt.Errorf("expected auto, off or an absolute cgroup path such as /baton/app, got %q", s)
		},
		format: quote,
		what:   "a string",
	}
}

func choiceSetting(p *string, choices ...string) setting {
	want := "one of " + strings.Join(choices, ", ")
	return scalar[string]{
		field: p,
		parse: func(s string) (string, error) {
			if !slices.Contains(choices, s) {
				return "", fmt.Errorf("expected %s, got %q", want, s)
			}
			return s, nil
		},
		format: quote,
		what:   want,
	}
}

// boolSetting is true or false (flags also take 1/0, yes/no).
func boolSetting(p *bool) setting {
	return scalar[bool]{
		field: p,
		parse: func(s string) (bool, error) {
			switch strings.ToLower(s) {
			case "true", "1", "yes":
				return true, nil
			case "false", "0", "no":
				return false, nil
			}
			return false, fmt.Errorf("expected true or false, got %q", s)
		},
		decode: func(v any) (bool, error) {
			b, ok := v.(bool)
			if !ok {
				return false, expected("true or false", v)
			}
			return b, nil
		},
		format: strconv.FormatBool,
	}
}

// durationSetting is a duration ≥ 0, given as a Go duration ("1m30s") or,
// like Gunicorn's timeouts, as a number of seconds (30, 1.5).
func durationSetting(p *time.Duration) setting {
	return scalar[time.Duration]{
		field: p,
		parse: parseDuration,
		decode: func(v any) (time.Duration, error) {
			switch v := v.(type) {
			case string:
				return parseDuration(v)
			case int64:
				return seconds(float64(v), strconv.FormatInt(v, 10))
			case float64:
				return seconds(v, formatFloat(v))
			}
			return 0, expected(`a duration ("30s", "1m30s") or a number of seconds`, v)
		},
		format: func(d time.Duration) string { return quote(d.String()) },
	}
}

// positiveDurationSetting is durationSetting without 0: a timeout that
// must leave some time (boot_timeout, graceful_timeout).
func positiveDurationSetting(p *time.Duration) setting {
	s := durationSetting(p).(scalar[time.Duration])
	parse, decode := s.parse, s.decode
	s.parse = func(str string) (time.Duration, error) {
		return positive(parse(str))(fmt.Sprintf("%q", str))
	}
	s.decode = func(v any) (time.Duration, error) {
		given := fmt.Sprint(v)
		switch v := v.(type) {
		case string:
			given = fmt.Sprintf("%q", v)
		case float64:
			given = formatFloat(v)
		}
		return positive(decode(v))(given)
	}
	return s
}

// positive refuses a duration of 0 (a problem found already is kept),
// naming the value as given.
func positive(d time.Duration, err error) func(given string) (time.Duration, error) {
	return func(given string) (time.Duration, error) {
		switch {
		case err != nil:
			return 0, err
		case d <= 0:
			return 0, fmt.Errorf("expected a duration > 0, got %s", given)
		}
		return d, nil
	}
}

// parseDuration takes a Go duration or a plain number of seconds.
func parseDuration(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return seconds(f, s)
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf(`expected a duration ("30s", "1m30s") or a number of seconds, got %q`, s)
	case d < 0:
		return 0, fmt.Errorf("expected a duration ≥ 0, got %q", s)
	}
	return d, nil
}

// seconds converts a number of seconds, written as given, to a duration.
func seconds(f float64, given string) (time.Duration, error) {
	switch {
	case f != f: // NaN
		return 0, fmt.Errorf("expected a number of seconds, got %s", given)
	case f < 0:
		return 0, fmt.Errorf("expected a duration ≥ 0, got %s", given)
	case f > float64(maxDuration/time.Second):
		return 0, fmt.Errorf("expected a duration of at most %d seconds, got %s", maxDuration/time.Second, given)
	}
	return time.Duration(f*float64(time.Second) + 0.5), nil
}

const maxDuration = time.Duration(1<<63 - 1)

// modeSetting is permission bits: an octal string ("0660", "660", "0o660"),
// or in TOML an integer (0o660).
func modeSetting(p *os.FileMode) setting {
	return scalar[os.FileMode]{
		field: p,
		parse: parseMode,
		decode: func(v any) (os.FileMode, error) {
			switch v := v.(type) {
			case string:
				return parseMode(v)
			case int64:
				return modeFromInt(v)
			}
			return 0, expected(`octal permission bits ("0660" or 0o660)`, v)
		},
		format: func(m os.FileMode) string { return quote(fmt.Sprintf("%04o", uint32(m))) },
	}
}

func parseMode(s string) (os.FileMode, error) {
	digits := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	n, err := strconv.ParseUint(digits, 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf(`expected octal permission bits up to 0777, like "0660", got %q`, s)
	}
	return os.FileMode(n), nil
}

// modeFromInt takes a TOML integer. Written in decimal, 660 is 0o1224, not
// rw-rw----: say how to write what was most likely meant.
func modeFromInt(n int64) (os.FileMode, error) {
	if n < 0 || n > 0o777 {
		return 0, fmt.Errorf(`expected permission bits up to 0o777, got %d (0o%o): write them in octal, as "0%d" or 0o%d`, n, n, n, n)
	}
	return os.FileMode(n), nil
}

// quote writes s as a TOML basic string. TOML has no \x escape, and every
// string in a Config is UTF-8 or comes from a command line; bytes that are
// not UTF-8 cannot be written in TOML at all, and come out as U+FFFD.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// quoteList writes strings as a TOML array.
func quoteList(list []string) string {
	quoted := make([]string, len(list))
	for i, s := range list {
		quoted[i] = quote(s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}

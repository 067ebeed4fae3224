package config

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
)

// A Lifetime says when a change to a key takes effect in a running baton.
// Every key has one: baton never ignores a changed setting silently, so a
// reload either applies a change or refuses it, naming the key.
type Lifetime int

const (
	// lifetimeUnset is the zero value: a key without a lifetime, which a
	// test refuses.
	lifetimeUnset Lifetime = iota
	// PerGeneration keys are applied by a reload to the new generation's
	// workers (workers, command, env, timeouts, ...).
	PerGeneration
	// Reapplied keys belong to the master, which applies them again on a
	// reload (log_level, metrics_bind, control, watch, ...).
	Reapplied
	// StartOnly keys are read once, at start (bind, pid, log_file, ...): a
	// reload that changes one is refused; restart baton, or run
	// `baton upgrade`, to apply it.
	StartOnly
)

// String is the lifetime as README's Configuration table writes it in its
// "reload" column.
func (l Lifetime) String() string {
	switch l {
	case PerGeneration:
		return "next generation"
	case Reapplied:
		return "re-applied"
	case StartOnly:
		return "restart"
	}
	return fmt.Sprintf("Lifetime(%d)", int(l))
}

// valid reports whether l is one of the three lifetimes.
func (l Lifetime) valid() bool { return l >= PerGeneration && l <= StartOnly }

// KeyLifetime is one key's name and lifetime.
type KeyLifetime struct {
	Key      string
	Lifetime Lifetime
}

// KeyLifetimes lists every key with its lifetime, in the keys table's order
// (the order of TOML and `baton check`).
func KeyLifetimes() []KeyLifetime {
	list := make([]KeyLifetime, len(keys))
	for i, k := range keys {
		list[i] = KeyLifetime{Key: k.name, Lifetime: k.lifetime}
	}
	return list
}

// StartOnlySettings returns the effective value of every StartOnly key, by
// key name, written as TOML writes it (and `baton check` prints it after
// "key = "): "bind" -> `["127.0.0.1:8000"]`, "backlog" -> `2048`. A reload
// compares the running config's map with the new one's and refuses the
// reload if they differ (DescribeChanges says how).
func (c *Config) StartOnlySettings() map[string]string {
	settings := map[string]string{}
	for i := range keys {
		if k := &keys[i]; k.lifetime == StartOnly {
			settings[k.name] = k.setting(c).toTOML()
		}
	}
	return settings
}

// DescribeChanges lists the keys whose values differ between before and
// after (two StartOnlySettings, say), one line each, "backlog: 2048 -> 4096",
// in the keys table's order; names not in the table come last, by name. A
// key missing from one of the maps is shown as (none) there. It returns nil
// if nothing changed.
func DescribeChanges(before, after map[string]string) []string {
	names := slices.Collect(maps.Keys(before))
	for name := range after {
		if _, ok := before[name]; !ok {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(keyIndex(a), keyIndex(b)), cmp.Compare(a, b))
	})
	var lines []string
	for _, name := range names {
		was, hadIt := before[name]
		now, hasIt := after[name]
		if hadIt == hasIt && was == now {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s: %s -> %s", name, orNone(was, hadIt), orNone(now, hasIt)))
	}
	return lines
}

// keyIndex is the position of the key named name in the keys table, or
// len(keys) if there is none.
func keyIndex(name string) int {
	if i := slices.IndexFunc(keys, func(k key) bool { return k.name == name }); i >= 0 {
		return i
	}
	return len(keys)
}

func orNone(value string, ok bool) string {
	if !ok {
		return "(none)"
	}
	return value
}

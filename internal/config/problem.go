package config

import (
	"fmt"
	"strings"
)

// A Problem is one thing wrong with a configuration.
type Problem struct {
	File string // the config file, "" when the problem is not in the file
	Line int    // 1-based line in File, 0 when unknown
	// Key is what the problem is about: the TOML key for the file ("workers",
	// "env.PORT"), the flag for flags ("--workers"), "command" for the command
	// after "--", or "" for the file as a whole (syntax, unknown keys).
	Key string
	Msg string // what was expected and what was given
}

// Error formats the problem as "file:line: key: msg", leaving out the parts
// that are unknown: "--workers: msg" for a flag.
func (p Problem) Error() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
	}
	if p.Key != "" {
		b.WriteString(p.Key)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems is every problem Load found, in the order found: the file's keys
// by line, then flags, then the command, then checks against the system.
type Problems []Problem

// Error returns one problem per line.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// origin is where a key's value came from, to place problems with it.
type origin struct {
	file string // config file, or ""
	line int    // line in file, or 0
	flag string // long flag name without "--", or ""
}

// problem places msg about key at o: the flag if the value came from one,
// else the file and line (if any).
func (o origin) problem(key, msg string) Problem {
	if o.flag != "" {
		return Problem{Key: "--" + o.flag, Msg: msg}
	}
	return Problem{File: o.file, Line: o.line, Key: key, Msg: msg}
}

// suggest returns the known key closest to an unknown one, or "" when none
// is close enough to be a likely typo (at most two edits, fewer than the
// unknown key's length, so that "ab" does not suggest "pid").
func suggest(unknown string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		d := editDistance(strings.ToLower(unknown), k)
		if d < bestDist && d < len(unknown) {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b:
// insertions, deletions, substitutions and transpositions of adjacent bytes
// ("wrokers" is one edit from "workers") each count one.
func editDistance(a, b string) int {
	// d[i][j] is the distance between a[:i] and b[:j].
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

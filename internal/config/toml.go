package config

import (
	"strings"
)

// restartComment ends the line of every StartOnly key in TOML.
const restartComment = "  # restart to change"

// TOML returns the configuration as a config file: every key, in the keys
// table's order, with its effective value; StartOnly keys' lines end with
// restartComment. Loading it gives an equal Config (but for Source).
// Strings that are not UTF-8 cannot be written in TOML and come out with
// U+FFFD in place of the bad bytes.
func (c *Config) TOML() string {
	var b strings.Builder
	b.WriteString("# baton: effective configuration\n")
	b.WriteString("# \"restart to change\": a reload that changes the key is refused; restart baton to apply it\n")
	for i := range keys {
		k := &keys[i]
		b.WriteString(k.name)
		b.WriteString(" = ")
		b.WriteString(k.setting(c).toTOML())
		if k.lifetime == StartOnly {
			b.WriteString(restartComment)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

package config

import (
	"fmt"
	"strconv"
	"strings"
)

// sizeUnits are the suffixes a size may have; binary and decimal both,
// as people write either.
var sizeUnits = []struct {
	suffix string
	bytes  uint64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
}

const sizeExpected = `a size such as "512MiB", "1GiB", "300MB", or a number of bytes`

// parseSize reads a size; "" and "0" mean no limit.
func parseSize(s string) (uint64, error) {
	text := strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(text, u.suffix); ok {
			text, mult = strings.TrimSpace(n), u.bytes
			break
		}
	}
	n, err := strconv.ParseFloat(text, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("expected %s, got %q", sizeExpected, s)
	}
	return uint64(n * float64(mult)), nil
}

// sizeSetting is a byte size: a string with a unit, or a TOML integer of
// bytes.
func sizeSetting(p *uint64) setting {
	return scalar[uint64]{
		field: p,
		parse: parseSize,
		decode: func(v any) (uint64, error) {
			switch v := v.(type) {
			case string:
				return parseSize(v)
			case int64:
				if v >= 0 {
					return uint64(v), nil
				}
			}
			return 0, expected(sizeExpected, v)
		},
		format: func(n uint64) string { return strconv.FormatUint(n, 10) },
	}
}

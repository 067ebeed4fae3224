package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestWorkerCountsAndTimeoutsAreBounded(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	for _, tc := range []struct {
		name string
		file string
		args []string
		want []string
	}{
		{
			name: "workers above the ceiling",
			file: "workers = 100000\n",
			want: []string{"baton.toml:1: workers: expected an integer ≤ 1024 (baton's ceiling on worker processes), got 100000"},
		},
		{
			name: "workers at int64's maximum",
			file: "workers = 9223372036854775807\n",
			want: []string{"baton.toml:1: workers: expected an integer ≤ 1024 (baton's ceiling on worker processes), got 9223372036854775807"},
		},
		{
			name: "workers flag above the ceiling",
			args: []string{"-w", "1025"},
			want: []string{"--workers: expected an integer ≤ 1024 (baton's ceiling on worker processes), got 1025"},
		},
		{
			name: "max_surge above the ceiling",
			file: "max_surge = 5000\n",
			want: []string{"baton.toml:1: max_surge: expected an integer ≤ 1024 (baton's ceiling on worker processes), got 5000"},
		},
		{
			name: "zero timeouts in the file",
			file: "boot_timeout = \"0s\"\ngraceful_timeout = 0\n",
			want: []string{
				`baton.toml:1: boot_timeout: expected a duration > 0, got "0s"`,
				`baton.toml:2: graceful_timeout: expected a duration > 0, got 0`,
			},
		},
		{
			name: "zero timeouts as flags",
			args: []string{"--boot-timeout", "0", "--graceful-timeout", "0ms"},
			want: []string{
				`--graceful-timeout: expected a duration > 0, got "0ms"`,
				`--boot-timeout: expected a duration > 0, got "0"`,
			},
		},
		{
			name: "a duration that rounds to 0",
			file: "boot_timeout = 0.0000000001\n",
			want: []string{`baton.toml:1: boot_timeout: expected a duration > 0, got 1e-10`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append([]string{"-c", d.write(strings.ReplaceAll(tc.name, " ", "_")+".toml", tc.file, 0o644)}, args...)
			}
			got := d.problems(args, d.app())
			for i := range got {
				got[i] = strings.Replace(got[i], strings.ReplaceAll(tc.name, " ", "_")+".toml", "baton.toml", 1)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("problems:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(tc.want, "\n     "))
			}
		})
	}
	// The ceiling itself, and a timeout of 0 where 0 means off, are fine.
	c := d.mustLoad([]string{"-w", "1024", "--max-surge", "1024", "--timeout", "0", "--boot-timeout", "1ms"}, d.app())
	if c.Workers != 1024 || c.MaxSurge != 1024 || c.Timeout != 0 || c.BootTimeout != time.Millisecond {
		t.Errorf("workers %d, max_surge %d, timeout %v, boot_timeout %v", c.Workers, c.MaxSurge, c.Timeout, c.BootTimeout)
	}
}

// TestSymlinkedLogFileIsAProblem: baton check reports what the start
// would refuse (logging.CheckFile).
func TestSymlinkedLogFileIsAProblem(t *testing.T) {
	t.Parallel()
	d := newTestDir(t)
	target := d.write("elsewhere", "", 0o600)
	link := d.path + "/baton.log"
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	want := "--log-file: log file " + link + ": refused: it is a symbolic link (to " + target + "), which baton does not follow; name the file itself"
	if got := strings.Join(d.problems([]string{"--log-file", link}, d.app()), "\n"); got != strings.ReplaceAll(want, d.path+"/", "") {
		t.Errorf("problems:\n got %s\nwant %s", got, want)
	}
}

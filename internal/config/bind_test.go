package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseBind(t *testing.T) {
	t.Parallel()
	tests := []struct {
		raw  string
		want Bind // Raw is filled in from raw; Name defaults to "bind0"
	}{
		{"127.0.0.1:8000", Bind{Network: "tcp", Address: "127.0.0.1:8000"}},
		{"0.0.0.0:0", Bind{Network: "tcp", Address: "0.0.0.0:0"}},
		{":8000", Bind{Network: "tcp", Address: ":8000"}},
		{"localhost:8000", Bind{Network: "tcp", Address: "localhost:8000"}},
		{"app.example.com.:443", Bind{Network: "tcp", Address: "app.example.com.:443"}},
		{"[::1]:8000", Bind{Network: "tcp", Address: "[::1]:8000"}},
		{"[::]:80", Bind{Network: "tcp", Address: "[::]:80"}},
		{"[0:0::1]:08000", Bind{Network: "tcp", Address: "[::1]:8000"}},
		{"[fe80::1%eth0]:80", Bind{Network: "tcp", Address: "[fe80::1%eth0]:80"}},
		{"unix:/tmp/x.sock", Bind{Network: "unix", Address: "/tmp/x.sock"}},
		{"unix:run/x.sock", Bind{Network: "unix", Address: "run/x.sock"}},
		{"unix:///run/x.sock", Bind{Network: "unix", Address: "/run/x.sock"}},
		{"unix:/tmp/a=b.sock", Bind{Network: "unix", Address: "/tmp/a=b.sock"}},
		{"unix:/" + strings.Repeat("s", 106), Bind{Network: "unix", Address: "/" + strings.Repeat("s", 106)}},
		{"fd://3", Bind{Network: "fd", FD: 3}},
		{"fd://10", Bind{Network: "fd", FD: 10}},
		{"admin=127.0.0.1:9000", Bind{Name: "admin", Network: "tcp", Address: "127.0.0.1:9000"}},
		{"a.b_c-D9=unix:/x", Bind{Name: "a.b_c-D9", Network: "unix", Address: "/x"}},
		{"metrics=fd://4", Bind{Name: "metrics", Network: "fd", FD: 4}},
		{"systemd", Bind{Network: "systemd"}},
		{"systemd:web", Bind{Network: "systemd", Address: "web"}},
	}
	for _, tt := range tests {
		want := tt.want
		want.Raw = tt.raw
		if want.Name == "" {
			want.Name = "bind0"
		}
		got, err := parseBind(tt.raw, 0)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("parseBind(%q) = %+v, %v; want %+v", tt.raw, got, err, want)
		}
	}
}

func TestParseBindErrors(t *testing.T) {
	t.Parallel()
	long := "unix:/" + strings.Repeat("s", 199)
	tests := []struct{ raw, want string }{
		{"localhost", `"localhost" has no port: expected HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME`},
		{"127.0.0.1:", `"127.0.0.1:" has no port: expected HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME`},
		{"1.2.3.4:99999", `"1.2.3.4:99999": port 99999 is out of range: expected 0 to 65535`},
		{"1.2.3.4:http", `"1.2.3.4:http": port "http" is not a number: expected 0 to 65535`},
		{"1.2.3.4:-1", `"1.2.3.4:-1": port "-1" is not a number: expected 0 to 65535`},
		{"::1:8000", `"::1:8000": an IPv6 address needs brackets: expected [V6]:PORT, like [::1]:8000`},
		{"[::1:8000", `"[::1:8000" is not an address: expected HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME`},
		{"[1.2.3.4]:80", `"[1.2.3.4]:80": "1.2.3.4" is not an IPv6 address: brackets are for [V6]:PORT`},
		{"01.2.3.4:80", `"01.2.3.4:80": "01.2.3.4" is not an IP address or a host name`},
		{"bad_host:80", `"bad_host:80": "bad_host" is not an IP address or a host name`},
		{"systemd:a:b", `"systemd:a:b": "a:b" is not a FileDescriptorName: expected systemd:NAME with 1 to 64 of A-Z a-z 0-9 _ . -`},
		{"tcp://1.2.3.4:80", `"tcp://1.2.3.4:80": unknown scheme "tcp://": expected HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME`},
		{"fd://1", `"fd://1": fd 1 is baton's stdout, not an inherited listener: expected fd://N with N ≥ 3`},
		{"fd://0", `"fd://0": fd 0 is baton's stdin, not an inherited listener: expected fd://N with N ≥ 3`},
		{"fd://x", `"fd://x": "x" is not an fd number: expected fd://N with N ≥ 3`},
		{"fd://-3", `"fd://-3": "-3" is not an fd number: expected fd://N with N ≥ 3`},
		{"fd://+3", `"fd://+3": "+3" is not an fd number: expected fd://N with N ≥ 3`},
		{"fd://", `"fd://": "" is not an fd number: expected fd://N with N ≥ 3`},
		{"fd://99999999999", `"fd://99999999999": "99999999999" is not an fd number: expected fd://N with N ≥ 3`},
		{"unix:", `"unix:" has no socket path: expected unix:PATH`},
		{long, `"` + long + `": unix socket path is 200 bytes, the limit is 107`},
		{"", `"" has no address: expected HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME`},
		{"web=", `"web=" has no address: expected HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd://N, systemd or systemd:NAME`},
		{"=:80", `"=:80": the name "" is not valid: expected 1 to 64 of A-Z a-z 0-9 _ . -`},
		{"my app=:80", `"my app=:80": the name "my app" is not valid: expected 1 to 64 of A-Z a-z 0-9 _ . -`},
		{strings.Repeat("n", 65) + "=:80", `"` + strings.Repeat("n", 65) + `=:80": the name "` + strings.Repeat("n", 65) + `" is not valid: expected 1 to 64 of A-Z a-z 0-9 _ . -`},
		{"unix:/a\x00b", `"unix:/a\x00b" contains a NUL byte`},
	}
	for _, tt := range tests {
		_, err := parseBind(tt.raw, 0)
		if err == nil || err.Error() != tt.want {
			t.Errorf("parseBind(%q) error:\n got %v\nwant %s", tt.raw, err, tt.want)
		}
	}
}

func TestParseBindsNames(t *testing.T) {
	t.Parallel()
	binds, errs := parseBinds([]string{":8000", "admin=:8001", "unix:/x", ":0", ":0"})
	if errs != nil {
		t.Fatal(errs)
	}
	var names []string
	for _, b := range binds {
		names = append(names, b.Name)
	}
	if want := []string{"bind0", "admin", "bind2", "bind3", "bind4"}; !slices.Equal(names, want) {
		t.Errorf("names = %q, want %q", names, want)
	}
}

func TestParseBindsDuplicates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		raws []string
		want string
	}{
		{[]string{"bind1=:8000", ":8001"}, `"bind1=:8000" and ":8001" have the same name "bind1"`},
		{[]string{"[::1]:80", "[0::1]:80"}, `"[::1]:80" and "[0::1]:80" are the same address`},
		{[]string{"unix:/run/x", "unix:/run//x"}, `"unix:/run/x" and "unix:/run//x" are the same address`},
		{[]string{"fd://3", "a=fd://3"}, `"fd://3" and "a=fd://3" are the same address`},
		{[]string{"LocalHost:80", "localhost:80"}, `"LocalHost:80" and "localhost:80" are the same address`},
	}
	for _, tt := range tests {
		_, errs := parseBinds(tt.raws)
		if len(errs) != 1 || errs[0].Error() != tt.want {
			t.Errorf("parseBinds(%q) = %v, want %s", tt.raws, errs, tt.want)
		}
	}
}

// FuzzParseBind checks that parseBind never panics, and that what it
// accepts is well formed and parses again to the same Bind.
func FuzzParseBind(f *testing.F) {
	for _, seed := range []string{
		"127.0.0.1:8000", "[::1]:8000", ":8000", "unix:/tmp/x.sock", "unix:///x", "fd://3",
		"admin=127.0.0.1:9000", "localhost", "1.2.3.4:99999", "fd://1", "[fe80::1%eth0]:0",
		"a=b=c:1", "=", "unix:", "fd://", "[]:1", "[:1", "x:1:2",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		b, err := parseBind(raw, 7)
		if err != nil {
			if !strings.HasPrefix(err.Error(), `"`) {
				t.Errorf("parseBind(%q): error does not start with the bind: %v", raw, err)
			}
			return
		}
		if b.Raw != raw || !bindName.MatchString(b.Name) {
			t.Errorf("parseBind(%q) = %+v: bad Raw or Name", raw, b)
		}
		switch b.Network {
		case NetworkTCP:
			if b.Address == "" || b.FD != 0 {
				t.Errorf("parseBind(%q) = %+v: bad tcp bind", raw, b)
			}
		case NetworkUnix:
			if b.Address == "" || len(b.Address) > maxUnixPath || b.FD != 0 {
				t.Errorf("parseBind(%q) = %+v: bad unix bind", raw, b)
			}
		case NetworkFD:
			if b.FD < 3 || b.Address != "" {
				t.Errorf("parseBind(%q) = %+v: bad fd bind", raw, b)
			}
		default:
			t.Errorf("parseBind(%q) = %+v: unknown network", raw, b)
		}
		again, err := parseBind(b.Raw, 7)
		if err != nil || again != b {
			t.Errorf("parseBind(%q) again = %+v, %v; want %+v", b.Raw, again, err, b)
		}
	})
}

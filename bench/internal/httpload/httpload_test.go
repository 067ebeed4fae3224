package httpload

import "testing"

func TestClassify(t *testing.T) {
	cases := []struct {
		code uint16
		err  string
		want Kind
	}{
		{200, "", OK},
		{204, "", OK},
		{0, `Post "http://127.0.0.1:8000/": dial tcp 127.0.0.1:8000: connect: connection refused`, Refused},
		{0, `Post "http://127.0.0.1:8000/": read tcp 127.0.0.1:51234->127.0.0.1:8000: read: connection reset by peer`, Reset},
		{0, `Post "http://127.0.0.1:8000/": EOF`, EOF},
		{0, "unexpected EOF", EOF},
		{0, `Post "http://127.0.0.1:8000/": context deadline exceeded (Client.Timeout exceeded while awaiting headers)`, Timeout},
		{0, "dial tcp 127.0.0.1:8000: i/o timeout", Timeout},
		{502, "502 Bad Gateway", Non2xx},
		{301, "", Non2xx},
		{101, "", Non2xx},
		{0, "", Non2xx},
		{0, `Post "http://127.0.0.1:8000/": http: server closed idle connection`, Other},
		{0, "write: broken pipe", Other},
		{200, "unexpected EOF", EOF}, // a 2xx whose body could not be read
	}
	for _, c := range cases {
		if got := Classify(c.code, c.err); got != c.want {
			t.Errorf("Classify(%d, %q) = %s, want %s", c.code, c.err, got, c.want)
		}
	}
}

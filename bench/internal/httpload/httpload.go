// Package httpload is what the benchmark suite and the fleet rollout share
// about a load client: an HTTP client that never sends a request twice, and
// the classification of every result into one kind of outcome, so that a
// failure is counted once, by what the client saw.
package httpload

import (
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// Kind is what became of one request.
type Kind int

// The kinds of outcome, in the reports' column order.
const (
	OK      Kind = iota // 2xx, no error
	Refused             // "connection refused": nothing was listening
	Reset               // "connection reset": the server side aborted the connection
	EOF                 // "EOF": the connection closed before a whole response
	Timeout             // "timeout" / "deadline exceeded": no answer within the client's timeout
	Non2xx              // status >= 300 (or < 200), or status 0 without a network error
	Other               // any other error
	NumKinds
)

var kindNames = [NumKinds]string{"ok", "refused", "reset", "EOF", "timeout", "non-2xx", "other"}

func (k Kind) String() string {
	if k < 0 || k >= NumKinds {
		return "?"
	}
	return kindNames[k]
}

// Classify sorts one result into a Kind from its status code and error
// string, as vegeta reports them: code 0 means no response was read, and
// for a response outside 1xx–3xx vegeta sets the error to the status line.
func Classify(code uint16, errText string) Kind {
	if code != 0 {
		if code >= 200 && code < 300 {
			if errText == "" {
				return OK
			}
			// A 2xx whose body could not be read: the error says why.
			return classifyError(errText)
		}
		return Non2xx
	}
	if errText == "" {
		return Non2xx
	}
	return classifyError(errText)
}

func classifyError(errText string) Kind {
	e := strings.ToLower(errText)
	switch {
	case strings.Contains(e, "connection refused"):
		return Refused
	case strings.Contains(e, "connection reset"):
		return Reset
	case strings.Contains(e, "eof"):
		return EOF
	case strings.Contains(e, "timeout"), strings.Contains(e, "deadline exceeded"):
		return Timeout
	}
	return Other
}

// noReplay keeps net/http from ever sending a request twice. A POST is not
// "replayable" in net/http, but the Transport still retries any request on
// a reused connection when it wrote nothing before the connection failed,
// if the body can be rewound (GetBody, which http.NewRequest sets for a
// bytes.Reader body). Dropping GetBody turns that retry off too, so every
// failure the server causes reaches the result.
type noReplay struct{ next http.RoundTripper }

func (n noReplay) RoundTrip(r *http.Request) (*http.Response, error) {
	c := *r // a RoundTripper must not modify the caller's request
	c.GetBody = nil
	return n.next.RoundTrip(&c)
}

// NewClient is vegeta's own client (same dialer and transport settings as
// vegeta.KeepAlive and vegeta.Timeout would make), wrapped in noReplay.
// keepAlive false opens a new connection for every request.
func NewClient(keepAlive bool, timeout time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	if !keepAlive {
		dialer.KeepAlive = 0
	}
	tr := &http.Transport{
		Proxy:               nil, // never through a proxy from the environment
		DialContext:         dialer.DialContext,
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: vegeta.DefaultConnections,
		MaxConnsPerHost:     vegeta.DefaultMaxConnections,
		DisableCompression:  true,
	}
	return &http.Client{
		Transport: noReplay{tr},
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is a non-2xx answer here
		},
	}
}

// Percentile is the nearest-rank percentile p (0 < p <= 1) of ds; it sorts
// a copy. Zero for no values.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	c := slices.Clone(ds)
	slices.Sort(c)
	i := int(math.Ceil(p*float64(len(c)))) - 1
	i = max(0, min(i, len(c)-1))
	return c[i]
}

package hostapi

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/envd-project/envd/envdinit/state"
)

// FuzzFilesRawQuery sends /files requests whose query string is arbitrary
// bytes, parsed as the listener parses a request line (bad escapes, ';',
// repeated and empty parameters). With a token set, the gate answers 400
// only for a malformed signature_expiration, lets a request through only
// when its first signature is the right one for its first path, username
// and expiration (not expired), and otherwise answers 401.
func FuzzFilesRawQuery(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	good := Sign("/a", "read", "", "tok", nil)
	f.Add("path=/a&signature="+good, false)
	f.Add("path=/a&signature="+good+"&signature=x", false)
	f.Add("path=%2Fa&signature="+strings.ReplaceAll(good, "+", "%2B"), false)
	f.Add("path=/a;x=1&signature="+good, false)
	f.Add("signature_expiration=1e3&signature=v1_", true)
	f.Add("path=%zz&username=root&signature_expiration=1800000000", true)
	f.Add("&&&=&path&username=&signature=", false)
	e := newEnv(f, state.FlavorE2B, func(o *Options) { o.Now = func() time.Time { return now } })
	e.setToken("tok")
	f.Fuzz(func(t *testing.T, rawQuery string, post bool) {
		method, op := http.MethodGet, "read"
		if post {
			method, op = http.MethodPost, "write"
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(method + " /files?" + rawQuery + " HTTP/1.1\r\nHost: envd\r\nContent-Length: 0\r\n\r\n")))
		if err != nil || req.URL.Path != "/files" {
			return // the listener answers 400 itself
		}
		rec := httptest.NewRecorder()
		e.h.ServeHTTP(rec, req)
		q := req.URL.Query()
		var exp *int64
		expBad := false
		if vals, ok := q["signature_expiration"]; ok && len(vals) > 0 {
			v, err := strconv.ParseInt(vals[0], 10, 64)
			expBad = err != nil
			exp = &v
		}
		valid := !expBad && q.Get("signature") != "" &&
			q.Get("signature") == Sign(q.Get("path"), op, q.Get("username"), "tok", exp) &&
			(exp == nil || *exp >= now.Unix())
		switch {
		case expBad:
			if rec.Code != http.StatusBadRequest {
				t.Fatalf("malformed expiration: %d", rec.Code)
			}
		case valid:
			if rec.Code == http.StatusUnauthorized || rec.Code == http.StatusBadRequest {
				t.Fatalf("valid signature refused: %d %s", rec.Code, rec.Body)
			}
		default:
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("unsigned request through the gate: %d", rec.Code)
			}
		}
	})
}

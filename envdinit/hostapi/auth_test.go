package hostapi

import (
	"fmt"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/envd-project/envd/envdinit/state"
)

const unauthorizedBody = `{"code":401,"message":"unauthorized access, please provide a valid access token or method signing if supported"}` + "\n"

func TestSignVectors(t *testing.T) {
	if got := Sign("/home/user/file.txt", "read", "", "abc", nil); got != "v1_3be7PS8UIur4d5iha8v4rggapoqylKGXHTsOpa9KJCg" {
		t.Errorf("vector 1: %s", got)
	}
	exp := int64(1700000000)
	if got := Sign("file.txt", "write", "user", "abc", &exp); got != "v1_tQEzRSJk9JP1pC36KpDYrTxkHBCYy2tco52ssEOMlgk" {
		t.Errorf("vector 2: %s", got)
	}
	if sha512Hex("")[:8] != "cf83e135" {
		t.Error("sha512 of the empty string")
	}
}

func TestTokenGateMatrix(t *testing.T) {
	for _, flavor := range []state.Flavor{state.FlavorWrenn, state.FlavorE2B} {
		t.Run(string(flavor), func(t *testing.T) {
			e := newEnv(t, flavor)
			gated := []struct{ method, path string }{
				{"GET", "/metrics"}, {"GET", "/envs"},
				{"POST", "/process.Process/List"}, {"POST", "/filesystem.Filesystem/Stat"},
				{"HEAD", "/files"}, {"GET", "/files/"}, {"POST", "/files/compose"},
				{"HEAD", "/health"}, {"GET", "/nope"}, {"POST", "/health"},
				// Gated in both flavors (issue 12): a sandbox user must not
				// stop port forwarding once a token is set.
				{"POST", "/snapshot/prepare"},
			}
			// Open before a token is set.
			for _, g := range gated {
				if r := e.do(g.method, g.path, ""); r.code == 401 {
					t.Errorf("no token set: %s %s = 401", g.method, g.path)
				}
			}
			e.setToken("tok")
			for _, g := range gated {
				for _, hdr := range [][]string{nil, {"X-Access-Token", "wrong"}, {"X-Access-Token", "tok "}} {
					r := e.do(g.method, g.path, "", hdr...)
					if r.code != 401 {
						t.Errorf("%s %s %v: %d", g.method, g.path, hdr, r.code)
						continue
					}
					if g.method != "HEAD" && r.body != unauthorizedBody {
						t.Errorf("%s %s: body %q", g.method, g.path, r.body)
					}
					if r.hdr.Get("Content-Type") != "application/json; charset=utf-8" || r.hdr.Get("X-Content-Type-Options") != "nosniff" {
						t.Errorf("%s %s: headers %v", g.method, g.path, r.hdr)
					}
				}
				r := e.do(g.method, g.path, "", "X-Access-Token", "tok")
				if r.code == 401 {
					t.Errorf("right token: %s %s = 401 %q", g.method, g.path, r.body)
				}
			}
			// Exempt routes need no token.
			if r := e.do("GET", "/health", ""); r.code/100 != 2 {
				t.Errorf("GET /health: %d", r.code)
			}
			if r := e.do("GET", "/files?path=x", ""); r.code != 401 || r.body == unauthorizedBody {
				t.Errorf("GET /files reached the gate's 401: %d %q", r.code, r.body)
			}
			if r := e.do("POST", "/init", `{"accessToken":"tok"}`); r.code != 204 {
				t.Errorf("POST /init: %d %q", r.code, r.body)
			}
		})
	}
}

func TestFilesAuthMatrix(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	e := newEnv(t, state.FlavorWrenn, func(o *Options) { o.Now = func() time.Time { return now } })
	q := func(path, user, sig string, exp *string) string {
		v := url.Values{}
		v.Set("path", path)
		if user != "" {
			v.Set("username", user)
		}
		if sig != "" {
			v.Set("signature", sig)
		}
		if exp != nil {
			v.Set("signature_expiration", *exp)
		}
		return "/files?" + v.Encode()
	}
	str := func(s string) *string { return &s }
	i64 := func(v int64) *int64 { return &v }

	// No token: open, signatures ignored, but a malformed expiration is a 400.
	if r := e.do("GET", q("/a", "", "v1_garbage", nil), ""); r.code != 200 {
		t.Fatalf("open: %d", r.code)
	}
	if r := e.do("GET", q("/a", "", "", str("soon")), ""); r.code != 400 || r.hdr.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("malformed expiration without token: %d %v", r.code, r.hdr)
	}

	e.setToken("secret")
	future := now.Unix() + 60
	cases := []struct {
		name   string
		method string
		target string
		hdr    []string
		code   int
		msg    string
	}{
		{"no token", "GET", q("/a", "", "", nil), nil, 401, msgMissingSig},
		{"wrong header", "GET", q("/a", "", "", nil), []string{"X-Access-Token", "nope"}, 401, msgHeaderMismatch},
		{"right header", "GET", q("/a", "", "", nil), []string{"X-Access-Token", "secret"}, 200, ""},
		{"right header beats bad sig", "POST", q("/a", "", "v1_x", nil), []string{"X-Access-Token", "secret"}, 200, ""},
		{"valid sig", "GET", q("/a", "", Sign("/a", "read", "", "secret", nil), nil), nil, 200, ""},
		{"valid sig user", "POST", q("rel", "user", Sign("rel", "write", "user", "secret", nil), nil), nil, 200, ""},
		{"op mismatch", "POST", q("/a", "", Sign("/a", "read", "", "secret", nil), nil), nil, 401, msgInvalidSig},
		{"user signed but absent", "GET", q("/a", "", Sign("/a", "read", "root", "secret", nil), nil), nil, 401, msgInvalidSig},
		{"wrong sig", "GET", q("/a", "", "v1_AAAA", nil), nil, 401, msgInvalidSig},
		{"future exp", "GET", q("/a", "", Sign("/a", "read", "", "secret", i64(future)), str(fmt.Sprint(future))), nil, 200, ""},
		{"exp now", "GET", q("/a", "", Sign("/a", "read", "", "secret", i64(now.Unix())), str(fmt.Sprint(now.Unix()))), nil, 200, ""},
		{"expired", "GET", q("/a", "", Sign("/a", "read", "", "secret", i64(now.Unix()-1)), str(fmt.Sprint(now.Unix()-1))), nil, 401, msgExpiredSig},
		{"exp zero", "GET", q("/a", "", Sign("/a", "read", "", "secret", i64(0)), str("0")), nil, 401, msgExpiredSig},
		{"exp negative", "GET", q("/a", "", Sign("/a", "read", "", "secret", i64(-5)), str("-5")), nil, 401, msgExpiredSig},
		{"exp not signed", "GET", q("/a", "", Sign("/a", "read", "", "secret", nil), str(fmt.Sprint(future))), nil, 401, msgInvalidSig},
		{"malformed exp", "GET", q("/a", "", Sign("/a", "read", "", "secret", nil), str("12x")), nil, 400, ""},
		{"empty exp", "GET", q("/a", "", "", str("")), nil, 400, ""},
	}
	for _, c := range cases {
		r := e.do(c.method, c.target, "", c.hdr...)
		if r.code != c.code {
			t.Errorf("%s: %d %q", c.name, r.code, r.body)
			continue
		}
		switch {
		case c.code == 401:
			want := `{"code":401,"message":` + strconv.Quote(c.msg) + "}\n"
			if r.body != want || r.hdr.Get("Content-Type") != "application/json; charset=utf-8" {
				t.Errorf("%s: body %q", c.name, r.body)
			}
		case c.code == 400:
			if r.hdr.Get("Content-Type") != "text/plain; charset=utf-8" || len(r.body) == 0 ||
				r.body[:len("Invalid format for parameter signature_expiration")] != "Invalid format for parameter signature_expiration" {
				t.Errorf("%s: %q %v", c.name, r.body, r.hdr)
			}
		}
	}
}

func FuzzSignature(f *testing.F) {
	f.Add("/home/user/file.txt", "", "v1_3be7PS8UIur4d5iha8v4rggapoqylKGXHTsOpa9KJCg", "", false)
	f.Add("file.txt", "user", "v1_tQEzRSJk9JP1pC36KpDYrTxkHBCYy2tco52ssEOMlgk", "1700000000", true)
	f.Add("a:b", "x:y", "", "-1", true)
	f.Add("\x00", "ü", "v1_", "99999999999999999999", true)
	now := time.Unix(1_800_000_000, 0)
	fe := newEnv(f, state.FlavorE2B, func(o *Options) { o.Now = func() time.Time { return now } })
	fe.setToken("tok")
	f.Fuzz(func(t *testing.T, path, user, sig, exp string, withExp bool) {
		v := url.Values{}
		v.Set("path", path)
		v.Set("username", user)
		v.Set("signature", sig)
		if withExp {
			v.Set("signature_expiration", exp)
		}
		target := "/files?" + v.Encode()
		r := fe.do("GET", target, "")
		expVal, perr := strconv.ParseInt(exp, 10, 64)
		var expPtr *int64
		if withExp && perr == nil {
			expPtr = &expVal
		}
		switch {
		case withExp && perr != nil:
			if r.code != 400 {
				t.Fatalf("malformed exp %q: %d", exp, r.code)
			}
		case sig == Sign(path, "read", user, "tok", expPtr) && (expPtr == nil || *expPtr >= now.Unix()):
			if r.code != 200 {
				t.Fatalf("valid: %d %s", r.code, r.body)
			}
		default:
			if r.code != 401 {
				t.Fatalf("invalid accepted: %d", r.code)
			}
		}
		// The right signature for these exact values is always accepted
		// unless expired.
		good := Sign(path, "read", user, "tok", expPtr)
		v.Set("signature", good)
		r = fe.do("GET", "/files?"+v.Encode(), "")
		if !(withExp && perr != nil) {
			want := 200
			if expPtr != nil && *expPtr < now.Unix() {
				want = 401
			}
			if r.code != want {
				t.Fatalf("computed signature: %d, want %d", r.code, want)
			}
		}
	})
}

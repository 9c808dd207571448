package hostapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/envd-project/envd/envdinit/mmds"
	"github.com/envd-project/envd/envdinit/state"
)

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func TestInitEmptyBodyAndHeaders(t *testing.T) {
	for _, flavor := range []state.Flavor{state.FlavorWrenn, state.FlavorE2B} {
		e := newEnv(t, flavor)
		before := e.pushes.Load()
		for _, body := range []string{"", "  \n", "{}", "null"} {
			r := e.do("POST", "/init", body)
			if r.code != 204 || r.hdr.Get("Cache-Control") != "no-store" {
				t.Fatalf("%s %q: %d %v", flavor, body, r.code, r.hdr)
			}
			gotVersion := r.hdr.Get("X-Envd-Version")
			if flavor == state.FlavorE2B && gotVersion != "0.6.4-test" || flavor == state.FlavorWrenn && gotVersion != "" {
				t.Fatalf("%s: X-Envd-Version %q", flavor, gotVersion)
			}
		}
		if e.pushes.Load() == before {
			t.Fatalf("%s: an applied /init did not push a config", flavor)
		}
	}
}

func TestInitBadBodies(t *testing.T) {
	e := newEnv(t, state.FlavorE2B)
	for _, body := range []string{
		`{`, `[]`, `{"accessToken":""}`, `{"accessToken":"a\\u0062"}`, `{"accessToken":5}`,
		`{"timestamp":"yesterday"}`, `{"timestamp":12}`, `{"envVars":{"A":1}}`, `{"hyperloopIP":1}`,
		`{} {}`, `{"volumeMounts":{}}`,
	} {
		r := e.do("POST", "/init", body)
		if r.code != 400 || !strings.HasPrefix(r.hdr.Get("Content-Type"), "text/plain") || r.body == "" {
			t.Errorf("%s: %d %q %v", body, r.code, r.body, r.hdr)
		}
		if r.hdr.Get("X-Envd-Version") == "" {
			t.Errorf("%s: no X-Envd-Version on an error", body)
		}
	}
	if _, set := e.store.Token(); set {
		t.Fatal("a rejected body changed the token")
	}
}

func TestInitReplayGuardAndEnv(t *testing.T) {
	base := time.Now()
	for _, flavor := range []state.Flavor{state.FlavorE2B, state.FlavorWrenn} {
		t.Run(string(flavor), func(t *testing.T) {
			e := newEnv(t, flavor)
			post := func(body string) {
				t.Helper()
				if r := e.do("POST", "/init", body); r.code != 204 {
					t.Fatalf("%s: %d %q", body, r.code, r.body)
				}
			}
			e.store.Update(func(m state.Mutation) { m.SetInternalEnv(flavor.EnvPrefix()+"SANDBOX", "false") })
			post(fmt.Sprintf(`{"timestamp":%q,"envVars":{"A":"1","B":"2"},"defaultUser":"user","defaultWorkdir":"/w"}`, ts(base)))
			// Older and equal timestamps are ignored, still 204.
			post(fmt.Sprintf(`{"timestamp":%q,"envVars":{"A":"old"},"defaultUser":"old"}`, ts(base.Add(-time.Second))))
			post(fmt.Sprintf(`{"timestamp":%q,"envVars":{"A":"same"}}`, ts(base)))
			if env := e.store.Env(); env["A"] != "1" || env["B"] != "2" {
				t.Fatalf("stale request applied: %v", env)
			}
			cfg := e.store.Config()
			if cfg.DefaultUser != "user" || cfg.DefaultWorkdir != "/w" {
				t.Fatalf("defaults %q %q", cfg.DefaultUser, cfg.DefaultWorkdir)
			}
			// Newer: applied. Internal vars are protected; empty user ignored.
			internal := flavor.EnvPrefix() + "SANDBOX"
			post(fmt.Sprintf(`{"timestamp":%q,"envVars":{"C":"3",%q:"hacked"},"defaultUser":""}`, ts(base.Add(time.Second)), internal))
			env := e.store.Env()
			if env[internal] != "false" || env["C"] != "3" {
				t.Fatalf("env %v", env)
			}
			if flavor == state.FlavorE2B {
				if _, ok := env["A"]; ok {
					t.Fatalf("e2b must replace: %v", env)
				}
			} else if env["A"] != "1" {
				t.Fatalf("wrenn must merge: %v", env)
			}
			if e.store.Config().DefaultUser != "user" {
				t.Fatal("empty defaultUser applied")
			}
			// Undated requests always apply; absent envVars leaves env alone.
			post(`{"defaultWorkdir":"/x"}`)
			if e.store.Config().DefaultWorkdir != "/x" || e.store.Env()["C"] != "3" {
				t.Fatal("undated /init not applied as expected")
			}
			// Case-insensitive keys.
			post(`{"ENVVARS":{"D":"4"}}`)
			if e.store.Env()["D"] != "4" {
				t.Fatal("case-insensitive key ignored")
			}
		})
	}
}

func TestInitClockFlavor(t *testing.T) {
	ahead := time.Now().Add(time.Hour)
	e := newEnv(t, state.FlavorE2B)
	e.do("POST", "/init", fmt.Sprintf(`{"timestamp":%q}`, ts(ahead)))
	if steps := e.clock.Steps(); len(steps) != 1 || !steps[0].Equal(ahead) {
		t.Fatalf("e2b steps %v", steps)
	}
	// Within tolerance: no step.
	e.do("POST", "/init", fmt.Sprintf(`{"timestamp":%q}`, ts(e.clock.Now().Add(20*time.Millisecond))))
	if len(e.clock.Steps()) != 1 {
		t.Fatal("stepped within tolerance")
	}
	// A failing clock is only logged.
	e.clock.FailWith(errBoom)
	if r := e.do("POST", "/init", fmt.Sprintf(`{"timestamp":%q}`, ts(ahead.Add(time.Hour)))); r.code != 204 {
		t.Fatalf("clock failure: %d", r.code)
	}

	w := newEnv(t, state.FlavorWrenn)
	w.do("POST", "/init", fmt.Sprintf(`{"timestamp":%q}`, ts(ahead)))
	if len(w.clock.Steps()) != 0 {
		t.Fatal("wrenn stepped the clock")
	}
}

func TestInitTokenWithoutMMDS(t *testing.T) {
	e := newEnv(t, state.FlavorE2B)
	if r := e.do("POST", "/init", `{"accessToken":"t1"}`); r.code != 204 {
		t.Fatalf("first setup: %d", r.code)
	}
	if tok, set := e.store.Token(); !set || tok != "t1" {
		t.Fatal("token not set")
	}
	if r := e.do("POST", "/init", `{}`); r.code != 401 || r.body != "access token reset not authorized" {
		t.Fatalf("reset: %d %q", r.code, r.body)
	}
	if r := e.do("POST", "/init", `{"accessToken":"t2"}`); r.code != 401 || r.body != "access token validation failed" {
		t.Fatalf("change: %d %q", r.code, r.body)
	}
	// Stale requests are authorized first too.
	if r := e.do("POST", "/init", fmt.Sprintf(`{"accessToken":"bad","timestamp":%q}`, ts(time.Unix(1, 0)))); r.code != 401 {
		t.Fatalf("stale unauthorized: %d", r.code)
	}
	if r := e.do("POST", "/init", `{"accessToken":"t1","envVars":{"K":"v"}}`); r.code != 204 {
		t.Fatalf("same token: %d", r.code)
	}
	if tok, _ := e.store.Token(); tok != "t1" || e.store.Env()["K"] != "v" {
		t.Fatal("same-token /init not applied")
	}
}

// fakeMMDS serves a fixed accessTokenHash on loopback.
func fakeMMDS(t *testing.T, hash *string, mu *sync.Mutex) *mmds.Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "PUT" && r.URL.Path == "/latest/api/token":
			w.Write([]byte("session"))
		case r.Method == "GET" && r.URL.Path == "/" && r.Header.Get("X-Metadata-Token") == "session":
			mu.Lock()
			h := *hash
			mu.Unlock()
			fmt.Fprintf(w, `{"instanceID":"sbx-7","envID":"tpl-7","accessTokenHash":%q}`, h)
		default:
			http.Error(w, "no", 400)
		}
	}))
	t.Cleanup(srv.Close)
	return mmds.NewClient(strings.TrimPrefix(srv.URL, "http://"), zap.NewNop(), mmds.WithTimeout(2*time.Second))
}

func TestInitTokenWithMMDS(t *testing.T) {
	var mu sync.Mutex
	hash := ""
	setHash := func(h string) { mu.Lock(); hash = h; mu.Unlock() }
	client := fakeMMDS(t, &hash, &mu)
	e := newEnv(t, state.FlavorE2B, func(o *Options) { o.IsNotFC = false; o.MMDS = client })

	// No token, no hash: first setup.
	if r := e.do("POST", "/init", `{"accessToken":"t1"}`); r.code != 204 {
		t.Fatalf("setup: %d", r.code)
	}
	// After a resume the host rotates the token and publishes its hash.
	setHash(sha512Hex("t2"))
	if r := e.do("POST", "/init", `{"accessToken":"t3"}`); r.code != 401 || r.body != "access token validation failed" {
		t.Fatalf("wrong new token: %d %q", r.code, r.body)
	}
	if r := e.do("POST", "/init", `{"accessToken":"t2"}`); r.code != 204 {
		t.Fatalf("rotated token: %d %q", r.code, r.body)
	}
	if tok, _ := e.store.Token(); tok != "t2" {
		t.Fatal("token not rotated")
	}
	// Clearing needs the hash of "".
	if r := e.do("POST", "/init", `{}`); r.code != 401 || r.body != "access token reset not authorized" {
		t.Fatalf("clear without authorization: %d %q", r.code, r.body)
	}
	setHash(sha512Hex(""))
	if r := e.do("POST", "/init", `{}`); r.code != 204 {
		t.Fatalf("authorized clear: %d %q", r.code, r.body)
	}
	if _, set := e.store.Token(); set {
		t.Fatal("token not cleared")
	}
	// The re-poll after /init published the identity.
	idFile := filepath.Join(e.dir, "run", ".E2B_SANDBOX_ID")
	waitFor(t, "identity file", func() bool {
		b, err := os.ReadFile(idFile)
		return err == nil && string(b) == "sbx-7"
	})
	waitFor(t, "identity env", func() bool { return e.store.Env()["E2B_TEMPLATE_ID"] == "tpl-7" })

	// A gated request uses the token of the latest /init.
	e.setToken("t9")
	if r := e.do("GET", "/envs", "", "X-Access-Token", "t9"); r.code != 200 || !strings.Contains(r.body, `"E2B_SANDBOX_ID":"sbx-7"`) {
		t.Fatalf("/envs: %d %q", r.code, r.body)
	}
}

func TestInitSerializedAnd503(t *testing.T) {
	e := newEnv(t, state.FlavorWrenn)
	var wg sync.WaitGroup
	codes := make(chan int, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- e.do("POST", "/init", fmt.Sprintf(`{"envVars":{"K%d":"v"}}`, i)).code
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 204 {
			t.Fatalf("concurrent /init: %d", c)
		}
	}
	if n := len(e.store.Env()); n != 20 {
		t.Fatalf("merged %d vars", n)
	}
	// Lock held, caller gone → 503.
	e.api.initSem <- struct{}{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequest("POST", "/init", nil).WithContext(ctx)
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	<-e.api.initSem
	if rec.Code != 503 {
		t.Fatalf("busy: %d", rec.Code)
	}
}

func TestInitHyperloop(t *testing.T) {
	for _, flavor := range []state.Flavor{state.FlavorWrenn, state.FlavorE2B} {
		e := newEnv(t, flavor)
		host := eventsHost(flavor)
		os.WriteFile(e.api.opts.EtcHosts, []byte("127.0.0.1 localhost\n10.0.0.1 "+host+" other # c\n10.0.0.2\t"+host+"\n"), 0o644)
		if r := e.do("POST", "/init", `{"hyperloopIP":"192.0.2.7"}`); r.code != 204 {
			t.Fatal(r.code)
		}
		key := flavor.EnvPrefix() + "EVENTS_ADDRESS"
		waitFor(t, "events address", func() bool { return e.store.Env()[key] == "http://192.0.2.7" })
		b, _ := os.ReadFile(e.api.opts.EtcHosts)
		want := "127.0.0.1 localhost\n10.0.0.1\tother # c\n192.0.2.7\t" + host + "\n"
		if string(b) != want {
			t.Fatalf("%s hosts:\n%s\nwant:\n%s", flavor, b, want)
		}
		// Same IP again: file untouched, bad IP: only logged.
		e.do("POST", "/init", `{"hyperloopIP":"192.0.2.7"}`)
		e.do("POST", "/init", `{"hyperloopIP":"not-an-ip"}`)
		e.api.Close()
		if b2, _ := os.ReadFile(e.api.opts.EtcHosts); string(b2) != want {
			t.Fatalf("rewritten: %s", b2)
		}
	}
}

func selfSignedPEM(t *testing.T, cn string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestInitCABundle(t *testing.T) {
	e := newEnv(t, state.FlavorE2B)
	sys := e.api.opts.CABundle
	os.MkdirAll(filepath.Dir(sys), 0o755)
	os.WriteFile(sys, []byte("SYSTEM CERTS\n"), 0o644)
	post := func(bundle string) resp {
		b := fmt.Sprintf(`{"caBundle":%q}`, bundle)
		return e.do("POST", "/init", b)
	}
	c1, c2 := selfSignedPEM(t, "one"), selfSignedPEM(t, "two")
	if r := post(c1); r.code != 204 {
		t.Fatalf("%d %q", r.code, r.body)
	}
	if b, _ := os.ReadFile(sys); string(b) != "SYSTEM CERTS\n"+c1 {
		t.Fatalf("bundle:\n%s", b)
	}
	crt := filepath.Join(e.dir, "local-ca", "e2b-ca.crt")
	if b, _ := os.ReadFile(crt); string(b) != c1 {
		t.Fatalf("crt:\n%s", b)
	}
	if r := post(c1); r.code != 204 { // unchanged: no-op
		t.Fatal(r.code)
	}
	if r := post(c2); r.code != 204 {
		t.Fatal(r.code)
	}
	if b, _ := os.ReadFile(sys); string(b) != "SYSTEM CERTS\n"+c2 {
		t.Fatalf("previous bundle not replaced:\n%s", b)
	}
	if r := post("not a cert"); r.code != 400 || !strings.Contains(r.body, "failed to install CA bundle") {
		t.Fatalf("invalid: %d %q", r.code, r.body)
	}
	if b, _ := os.ReadFile(sys); string(b) != "SYSTEM CERTS\n"+c2 {
		t.Fatal("failed install changed the bundle")
	}
}

// Only the failure paths of NFS mounts can run here: a real mount needs an
// NFS server and would change the host's mount table.
func TestInitNFSErrors(t *testing.T) {
	e := newEnv(t, state.FlavorE2B, func(o *Options) { o.MountTimeout = 3 * time.Second })
	for _, body := range []string{
		`{"volumeMounts":[{"nfs_target":"127.0.0.1:/vol","path":"relative"}]}`,
		`{"volumeMounts":[{"nfs_target":"-o bind","path":"/mnt/x"}]}`,
		`{"volumeMounts":[{"nfs_target":"","path":"/mnt/x"}]}`,
	} {
		if r := e.do("POST", "/init", body); r.code != 400 || !strings.Contains(r.body, "failed to setup NFS volumes") {
			t.Errorf("%s: %d %q", body, r.code, r.body)
		}
	}
	// A real mount(8) run against a port where nothing listens fails
	// (no server, or no mount.nfs helper) within the budget.
	mnt := filepath.Join(e.dir, "vol")
	body := fmt.Sprintf(`{"volumeMounts":[{"nfs_target":"127.0.0.1:/nonexistent","path":%q}],"lifecycleID":"L1"}`, mnt)
	r := e.do("POST", "/init", body)
	if r.code != 400 || !strings.Contains(r.body, "failed to setup NFS volumes") {
		t.Fatalf("mount: %d %q", r.code, r.body)
	}
	if ok, _ := isMountPoint(mnt); ok {
		t.Fatal("something got mounted")
	}
	if st, err := os.Stat(mnt); err != nil || !st.IsDir() {
		t.Fatal("mount point not created")
	}
	// An empty list is fine.
	if r := e.do("POST", "/init", `{"volumeMounts":[]}`); r.code != 204 {
		t.Fatal(r.code)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/x`: "/x", `/t\011`: "/t\t", `/bad\09`: `/bad\09`, `/end\`: `/end\`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("%q → %q, want %q", in, got, want)
		}
	}
	if ok, err := isMountPoint("/"); err != nil || !ok {
		t.Fatalf("/ is a mount point: %v %v", ok, err)
	}
}

func FuzzInitBody(f *testing.F) {
	for _, s := range []string{
		``, `{}`, `null`, `{"accessToken":"abc","envVars":{"A":"b"},"timestamp":"2026-01-02T03:04:05.123456789Z"}`,
		`{"accessToken":""}`, `{"accessToken":"a\\"}`, `{"volumeMounts":[{"nfs_target":"h:/v","path":"/p"}],"lifecycleID":"x"}`,
		`{"hyperloopIP":"::1","caBundle":"x","defaultUser":"u","defaultWorkdir":"/w"}`, `{"TIMESTAMP":"bad"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		b, err := parseInitBody(body)
		if err != nil {
			if b != nil {
				t.Fatal("body with error")
			}
			return
		}
		if b.AccessToken != nil {
			tok := string(*b.AccessToken)
			if tok == "" || strings.Contains(tok, `\`) {
				t.Fatalf("bad token accepted: %q", tok)
			}
		}
	})
}

func TestMMDSMetadataReachesOnMMDS(t *testing.T) {
	var mu sync.Mutex
	hash := ""
	client := fakeMMDS(t, &hash, &mu)
	got := make(chan *mmds.Metadata, 1)
	e := newEnv(t, state.FlavorE2B, func(o *Options) {
		o.IsNotFC = false
		o.MMDS = client
		o.OnMMDS = func(md *mmds.Metadata) { got <- md }
	})
	e.api.Start(t.Context())
	select {
	case md := <-got:
		if md.InstanceID != "sbx-7" || md.EnvID != "tpl-7" {
			t.Fatalf("metadata %+v", md)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnMMDS never called")
	}
}

package hostapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	controlpb "github.com/envd-project/envd/gen/control"
	"go.uber.org/zap"

	"github.com/envd-project/envd/envdinit/clock"
	"github.com/envd-project/envd/envdinit/state"
)

type fakePlugins struct {
	prepared atomic.Int32
	restored atomic.Int32
	delay    time.Duration
	err      error
}

func (p *fakePlugins) SnapshotPrepare(ctx context.Context) error {
	p.prepared.Add(1)
	return p.err
}

func (p *fakePlugins) SnapshotRestored(ctx context.Context) error {
	if p.delay > 0 {
		select {
		case <-time.After(p.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.restored.Add(1)
	return p.err
}

type env struct {
	api     *API
	store   *state.Store
	plugins *fakePlugins
	clock   *clock.Fake
	h       http.Handler
	dir     string
	resets  atomic.Int32
	pushes  atomic.Int32
}

// newEnv builds an API with every host path under a temp dir, the mux of
// the front door (token gate outside, /files behind FilesAuth) and fakes
// for the plugins and the clock.
func newEnv(t testing.TB, flavor state.Flavor, mod ...func(*Options)) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{
		store:   state.New(&controlpb.Config{Flavor: string(flavor)}),
		plugins: &fakePlugins{},
		clock:   clock.NewFake(time.Now()),
		dir:     dir,
	}
	e.store.Subscribe(func(*controlpb.Config) { e.pushes.Add(1) })
	hosts := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1\tlocalhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Log:          zap.NewNop(),
		Store:        e.store,
		Plugins:      e.plugins,
		Version:      "0.6.4-test",
		IsNotFC:      true,
		ResetConns:   func() { e.resets.Add(1) },
		EtcHosts:     hosts,
		RunDir:       filepath.Join(dir, "run"),
		Clock:        e.clock,
		CABundle:     filepath.Join(dir, "certs", "ca-certificates.crt"),
		CACertDir:    filepath.Join(dir, "local-ca"),
		MountTimeout: 5 * time.Second,
	}
	for _, m := range mod {
		m(&opts)
	}
	e.api = New(opts)
	t.Cleanup(e.api.Close)
	mux := http.NewServeMux()
	files := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "files ok") })
	mux.Handle("GET /files", e.api.FilesAuth(files))
	mux.Handle("POST /files", e.api.FilesAuth(files))
	mux.HandleFunc("/process.Process/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "rpc ok") })
	mux.HandleFunc("/filesystem.Filesystem/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "rpc ok") })
	e.api.Register(mux)
	e.h = e.api.TokenGate(mux)
	return e
}

type resp struct {
	code int
	body string
	hdr  http.Header
}

func (e *env) do(method, target, body string, hdr ...string) resp {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, r)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return resp{rec.Code, rec.Body.String(), rec.Header()}
}

func (e *env) setToken(tok string) {
	e.store.Update(func(m state.Mutation) { m.SetToken(tok) })
}

// waitFor polls cond for up to 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var errBoom = errors.New("boom")

package mmds

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	controlpb "github.com/envd-project/envd/gen/control"
	"go.uber.org/zap"

	"github.com/envd-project/envd/envdinit/state"
)

// fake is a Firecracker-like MMDS V2 on loopback.
type fake struct {
	mu       sync.Mutex
	token    string // "" → empty token body
	body     string // metadata response
	delay    time.Duration
	status   int
	sessions atomic.Int32
	gets     atomic.Int32
}

func (f *fake) set(fn func(f *fake)) { f.mu.Lock(); fn(f); f.mu.Unlock() }

func (f *fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	token, body, delay, status := f.token, f.body, f.delay, f.status
	f.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
		if r.Header.Get("X-Metadata-Token-Ttl-Seconds") != "60" {
			http.Error(w, "missing ttl", http.StatusBadRequest)
			return
		}
		f.sessions.Add(1)
		_, _ = w.Write([]byte(token))
	case r.Method == http.MethodGet && r.URL.Path == "/":
		f.gets.Add(1)
		if r.Header.Get("X-Metadata-Token") != token || token == "" {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		if r.Header.Get("Accept") != "application/json" {
			http.Error(w, "want json", http.StatusBadRequest)
			return
		}
		if status != 0 {
			w.WriteHeader(status)
		}
		_, _ = w.Write([]byte(body))
	default:
		http.NotFound(w, r)
	}
}

func serve(t *testing.T, f *fake) string {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func newStore(flavor state.Flavor) *state.Store {
	return state.New(&controlpb.Config{Flavor: string(flavor)})
}

func readFile(t *testing.T, path string) (string, os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	return string(b), st.Mode().Perm()
}

func TestRefreshOnlyIDs(t *testing.T) {
	for _, flavor := range []state.Flavor{state.FlavorWrenn, state.FlavorE2B} {
		t.Run(string(flavor), func(t *testing.T) {
			f := &fake{token: "tok-1", body: `{"instanceID":"sbx-1","envID":"tpl-9"}`}
			c := NewClient(serve(t, f), zap.NewNop())
			store := newStore(flavor)
			runDir := filepath.Join(t.TempDir(), "run", "dir") // created by Refresh
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			md, err := c.Refresh(ctx, store, runDir)
			if err != nil {
				t.Fatal(err)
			}
			if md.Address != "" || md.AccessTokenHash != "" {
				t.Fatalf("%+v", md)
			}
			p := flavor.EnvPrefix()
			for name, want := range map[string]string{p + "SANDBOX_ID": "sbx-1", p + "TEMPLATE_ID": "tpl-9"} {
				got, mode := readFile(t, filepath.Join(runDir, "."+name))
				if got != want || mode != 0o666 {
					t.Errorf("%s = %q %v", name, got, mode)
				}
				if env := store.Env()[name]; env != want {
					t.Errorf("env %s = %q", name, env)
				}
			}
			// A second refresh with the same ids does not bump the config.
			gen := store.Config().Generation
			if _, err := c.Refresh(ctx, store, runDir); err != nil {
				t.Fatal(err)
			}
			if store.Config().Generation != gen {
				t.Error("unchanged identity pushed a new config")
			}
		})
	}
}

func TestFullPayloadAndUnknownKeys(t *testing.T) {
	f := &fake{token: "t", body: `{"instanceID":"a","envID":"b","address":"http://logs","accessTokenHash":"abc","extra":{"x":1}}`}
	c := NewClient(serve(t, f), zap.NewNop())
	h, err := c.AccessTokenHash(context.Background())
	if err != nil || h != "abc" {
		t.Fatalf("hash %q %v", h, err)
	}
	md, err := c.Get(context.Background())
	if err != nil || md.Address != "http://logs" {
		t.Fatalf("%+v %v", md, err)
	}
}

func TestMissingIDsSkipped(t *testing.T) {
	f := &fake{token: "t", body: `{}`}
	c := NewClient(serve(t, f), zap.NewNop())
	store := newStore(state.FlavorWrenn)
	dir := t.TempDir()
	if _, err := c.Refresh(context.Background(), store, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".WRENN_SANDBOX_ID")); !os.IsNotExist(err) {
		t.Fatalf("file written for an absent id: %v", err)
	}
}

func TestFailures(t *testing.T) {
	cases := map[string]*fake{
		"empty token": {token: "", body: `{}`},
		"garbage":     {token: "t", body: `<html>not json`},
		"array":       {token: "t", body: `[1,2]`},
		"wrong type":  {token: "t", body: `{"instanceID":5}`},
		"status 500":  {token: "t", body: `{}`, status: 500},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			c := NewClient(serve(t, f), zap.NewNop(), WithTimeout(time.Second))
			if _, err := c.Get(context.Background()); err == nil {
				t.Fatal("want error")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
			defer cancel()
			c2 := NewClient(c.Addr(), zap.NewNop(), WithPollInterval(10*time.Millisecond))
			if _, err := c2.Poll(ctx); err == nil {
				t.Fatal("Poll: want error")
			}
		})
	}
}

func TestSlowServerTimesOut(t *testing.T) {
	f := &fake{token: "t", body: `{"instanceID":"a"}`, delay: 10 * time.Second}
	c := NewClient(serve(t, f), zap.NewNop(), WithTimeout(100*time.Millisecond), WithPollInterval(10*time.Millisecond))
	if _, err := c.Get(context.Background()); err == nil {
		t.Fatal("want timeout")
	}
	// The server recovers: polling keeps going and succeeds.
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.Poll(ctx)
		done <- err
	}()
	time.Sleep(150 * time.Millisecond)
	f.set(func(f *fake) { f.delay = 0 })
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Poll did not finish")
	}
}

func TestPollRecoversFromGarbage(t *testing.T) {
	f := &fake{token: "t", body: `garbage`}
	c := NewClient(serve(t, f), zap.NewNop(), WithPollInterval(5*time.Millisecond))
	go func() {
		time.Sleep(50 * time.Millisecond)
		f.set(func(f *fake) { f.body = `{"instanceID":"x","envID":"y"}` })
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	md, err := c.Poll(ctx)
	if err != nil || md.InstanceID != "x" {
		t.Fatalf("%+v %v", md, err)
	}
	if f.gets.Load() < 2 {
		t.Fatalf("only %d attempts", f.gets.Load())
	}
}

func TestConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close()
	c := NewClient(addr, zap.NewNop(), WithTimeout(time.Second))
	if _, err := c.AccessTokenHash(context.Background()); err == nil {
		t.Fatal("want error")
	}
}

func TestRepairThenRetry(t *testing.T) {
	f := &fake{token: "t", body: `{"accessTokenHash":"h"}`, status: 503}
	var repairs atomic.Int32
	c := NewClient(serve(t, f), zap.NewNop(), WithRepair(func(context.Context) error {
		repairs.Add(1)
		f.set(func(f *fake) { f.status = 0 })
		return nil
	}))
	h, err := c.AccessTokenHash(context.Background())
	if err != nil || h != "h" || repairs.Load() != 1 {
		t.Fatalf("hash %q err %v repairs %d", h, err, repairs.Load())
	}
	if NewClient("127.0.0.1:1", nil).repair != nil {
		t.Fatal("a non-default address must never run iptables")
	}
}

func TestMarkSandbox(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	store := newStore(state.FlavorE2B)
	if err := MarkSandbox(store, dir, false); err != nil {
		t.Fatal(err)
	}
	if err := MarkSandbox(store, dir, true); err != nil { // replaces a 0444 file
		t.Fatal(err)
	}
	got, mode := readFile(t, filepath.Join(dir, ".E2B_SANDBOX"))
	if got != "true" || mode != 0o444 {
		t.Fatalf("%q %v", got, mode)
	}
	if store.Env()["E2B_SANDBOX"] != "true" {
		t.Fatal("env not set")
	}
	st, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o755 {
		t.Fatalf("run dir mode %v", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temp files left: %v", entries)
	}
}

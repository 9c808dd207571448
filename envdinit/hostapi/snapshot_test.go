package hostapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/envd-project/envd/envdinit/metrics"
	"github.com/envd-project/envd/envdinit/state"
)

func TestHealthFlavors(t *testing.T) {
	w := newEnv(t, state.FlavorWrenn)
	r := w.do("GET", "/health", "")
	if r.code != 200 || r.body != `{"version":"0.6.4-test"}`+"\n" || r.hdr.Get("Content-Type") != "application/json" || r.hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("wrenn: %d %q %v", r.code, r.body, r.hdr)
	}
	e := newEnv(t, state.FlavorE2B)
	r = e.do("GET", "/health", "")
	if r.code != 204 || r.body != "" || r.hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("e2b: %d %q %v", r.code, r.body, r.hdr)
	}
}

func TestEnvsAndMetricsRoutes(t *testing.T) {
	s := metrics.NewSampler(zap.NewNop(), time.Hour)
	defer s.Close()
	e := newEnv(t, state.FlavorWrenn, func(o *Options) { o.Metrics = s })
	e.do("POST", "/init", `{"envVars":{"X":"1"}}`)
	r := e.do("GET", "/envs", "")
	var env map[string]string
	if r.code != 200 || json.Unmarshal([]byte(r.body), &env) != nil || env["X"] != "1" || r.hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("/envs: %d %q", r.code, r.body)
	}
	r = e.do("GET", "/metrics", "")
	var m map[string]any
	if r.code != 200 || json.Unmarshal([]byte(r.body), &m) != nil || m["mem_total"] == nil {
		t.Fatalf("/metrics: %d %q", r.code, r.body)
	}
	if r := newEnv(t, state.FlavorWrenn).do("GET", "/metrics", ""); r.code != 500 {
		t.Fatalf("no sampler: %d", r.code)
	}
}

func TestSnapshotPrepareThenHealthRecoversOnce(t *testing.T) {
	e := newEnv(t, state.FlavorWrenn)
	if r := e.do("GET", "/health", ""); r.code != 200 || e.plugins.restored.Load() != 0 {
		t.Fatal("recovery without a prepare")
	}
	r := e.do("POST", "/snapshot/prepare", "")
	if r.code != 204 || r.hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("prepare: %d", r.code)
	}
	if e.plugins.prepared.Load() != 1 || e.resets.Load() != 1 || !e.api.NeedsRecovery() {
		t.Fatalf("prepare: plugins %d resets %d", e.plugins.prepared.Load(), e.resets.Load())
	}
	// Many concurrent first /health calls: one recovery, all answer after it.
	e.plugins.delay = 50 * time.Millisecond
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := e.do("GET", "/health", ""); r.code != 200 {
				t.Errorf("health: %d", r.code)
			}
			if e.plugins.restored.Load() != 1 {
				t.Error("health answered before recovery finished")
			}
		}()
	}
	wg.Wait()
	e.do("GET", "/health", "")
	e.do("POST", "/init", "")
	if n := e.plugins.restored.Load(); n != 1 {
		t.Fatalf("recovered %d times", n)
	}
	if e.resets.Load() != 2 || e.api.NeedsRecovery() {
		t.Fatalf("resets %d", e.resets.Load())
	}

	// Next cycle: the /init comes first (Wrenn's host agent) and recovers.
	e.plugins.delay = 0
	e.do("POST", "/snapshot/prepare", "")
	e.do("POST", "/init", `{"envVars":{"A":"b"}}`)
	e.do("GET", "/health", "")
	if n := e.plugins.restored.Load(); n != 2 {
		t.Fatalf("recovered %d times", n)
	}
	// A stale /init does not recover; the next /health does.
	e.do("POST", "/init", fmt.Sprintf(`{"timestamp":%q}`, ts(time.Now())))
	e.do("POST", "/snapshot/prepare", "")
	e.do("POST", "/init", fmt.Sprintf(`{"timestamp":%q}`, ts(time.Now().Add(-time.Hour))))
	if n := e.plugins.restored.Load(); n != 2 {
		t.Fatalf("stale /init recovered: %d", n)
	}
	e.do("GET", "/health", "")
	if n := e.plugins.restored.Load(); n != 3 {
		t.Fatalf("recovered %d times", n)
	}
}

func TestSnapshotPluginFailuresAreNotFatal(t *testing.T) {
	e := newEnv(t, state.FlavorWrenn)
	e.plugins.err = errBoom
	if r := e.do("POST", "/snapshot/prepare", ""); r.code != 204 {
		t.Fatalf("prepare: %d", r.code)
	}
	if r := e.do("GET", "/health", ""); r.code != 200 {
		t.Fatalf("health: %d", r.code)
	}
	if e.api.NeedsRecovery() || e.plugins.restored.Load() != 1 {
		t.Fatal("failed recovery must not repeat on every /health")
	}
}

func TestStartPublishesIdentity(t *testing.T) {
	var mu sync.Mutex
	hash := ""
	client := fakeMMDS(t, &hash, &mu)
	e := newEnv(t, state.FlavorWrenn, func(o *Options) { o.IsNotFC = false; o.MMDS = client })
	e.api.Start(t.Context())
	run := filepath.Join(e.dir, "run")
	if b, err := os.ReadFile(filepath.Join(run, ".WRENN_SANDBOX")); err != nil || string(b) != "true" {
		t.Fatalf("marker: %q %v", b, err)
	}
	waitFor(t, "sandbox id", func() bool {
		b, err := os.ReadFile(filepath.Join(run, ".WRENN_SANDBOX_ID"))
		return err == nil && string(b) == "sbx-7"
	})
	env := e.store.Env()
	if env["WRENN_SANDBOX"] != "true" || env["WRENN_TEMPLATE_ID"] != "tpl-7" {
		t.Fatalf("env %v", env)
	}

	// --isnotfc: marker says false, no MMDS.
	n := newEnv(t, state.FlavorE2B)
	n.api.Start(t.Context())
	if b, _ := os.ReadFile(filepath.Join(n.dir, "run", ".E2B_SANDBOX")); string(b) != "false" {
		t.Fatalf("isnotfc marker %q", b)
	}
}

// BenchmarkSnapshotPrepare is the envd-init side of /snapshot/prepare
// (plugins faked): sync(2), two GCs, connection reset.
func BenchmarkSnapshotPrepare(b *testing.B) {
	e := newEnv(b, state.FlavorWrenn)
	for b.Loop() {
		if r := e.do("POST", "/snapshot/prepare", ""); r.code != 204 {
			b.Fatal(r.code)
		}
		e.do("GET", "/health", "")
	}
}

func TestNewZeroOptions(t *testing.T) {
	a := New(Options{})
	defer a.Close()
	mux := http.NewServeMux()
	a.Register(mux)
	rec := httptest.NewRecorder()
	a.TokenGate(mux).ServeHTTP(rec, httptest.NewRequest("GET", "/health", nil))
	if rec.Code != 200 || a.opts.RunDir != "/run/wrenn" || a.opts.EtcHosts != "/etc/hosts" {
		t.Fatalf("%d %+v", rec.Code, a.opts)
	}
}

package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

func get(t testing.TB, h http.Handler) (*http.Response, []byte) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	res := rec.Result()
	b, _ := io.ReadAll(res.Body)
	return res, b
}

func TestHandlerShapeAndRange(t *testing.T) {
	s := NewSampler(zap.NewNop(), time.Hour)
	defer s.Close()
	h := s.Handler()
	res1, b1 := get(t, h)
	res2, b2 := get(t, h)
	if res1.StatusCode != 200 || res2.StatusCode != 200 {
		t.Fatalf("status %d %d", res1.StatusCode, res2.StatusCode)
	}
	if string(b1) != string(b2) {
		t.Fatalf("same window, different answers:\n%s\n%s", b1, b2)
	}
	if ct := res1.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := res1.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	var m map[string]json.Number
	dec := json.NewDecoder(bytesReader(b1))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("decode %s: %v", b1, err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	want := "[cpu_count cpu_used_pct disk_total disk_used mem_cache mem_total mem_total_mib mem_used mem_used_mib ts]"
	if fmt.Sprint(keys) != want {
		t.Fatalf("keys %v, want %s", keys, want)
	}
	var snap Snapshot
	if err := json.Unmarshal(b1, &snap); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	if snap.TS < now-5 || snap.TS > now+1 {
		t.Errorf("ts %d, now %d", snap.TS, now)
	}
	if snap.CPUCount < 1 || snap.CPUUsedPct < 0 || snap.CPUUsedPct > 100 {
		t.Errorf("cpu %d %v", snap.CPUCount, snap.CPUUsedPct)
	}
	if snap.MemTotal == 0 || snap.MemUsed > snap.MemTotal || snap.MemTotalMiB != snap.MemTotal/(1<<20) || snap.MemUsedMiB != snap.MemUsed/(1<<20) {
		t.Errorf("mem %+v", snap)
	}
	if snap.MemCache == nil || *snap.MemCache > snap.MemTotal {
		t.Errorf("mem_cache %v", snap.MemCache)
	}
	if snap.DiskTotal == 0 || snap.DiskUsed > snap.DiskTotal {
		t.Errorf("disk %d/%d", snap.DiskUsed, snap.DiskTotal)
	}
}

func TestWithoutMemCache(t *testing.T) {
	s := NewSampler(zap.NewNop(), time.Hour, WithMemCache(false))
	defer s.Close()
	_, b := get(t, s.Handler())
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["mem_cache"]; ok {
		t.Fatal("mem_cache present")
	}
	if len(m) != 9 {
		t.Fatalf("%d keys: %v", len(m), m)
	}
}

func TestCollectionFailureIs500(t *testing.T) {
	s := NewSampler(zap.NewNop(), time.Hour, WithDiskPath("/nonexistent/envd-test"))
	defer s.Close()
	res, b := get(t, s.Handler())
	if res.StatusCode != 500 || len(b) != 0 {
		t.Fatalf("status %d body %q", res.StatusCode, b)
	}
	if _, err := s.Snapshot(); err == nil {
		t.Fatal("Snapshot: want error")
	}
}

func TestRunRefreshes(t *testing.T) {
	s := NewSampler(zap.NewNop(), 5*time.Millisecond)
	first := s.cur.Load()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	deadline := time.After(5 * time.Second)
	for s.cur.Load() == first {
		select {
		case <-deadline:
			t.Fatal("no new sample")
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
	if s.stat != nil || s.meminfo != nil {
		t.Fatal("files not closed")
	}
	if res, _ := get(t, s.Handler()); res.StatusCode != 200 {
		t.Fatalf("after Run: %d", res.StatusCode)
	}
}

func TestParseStat(t *testing.T) {
	data := []byte("cpu  100 5 50 800 20 3 2 10 7 1\ncpu0 50 2 25 400 10 1 1 5 3 0\ncpu1 50 3 25 400 10 2 1 5 4 1\nintr 1 2\nctxt 5\n")
	total, idle, n, err := parseStat(data)
	if err != nil {
		t.Fatal(err)
	}
	if total != 990 || idle != 820 || n != 2 {
		t.Fatalf("total %d idle %d n %d", total, idle, n)
	}
	for _, bad := range []string{"", "cpu 1 2\n", "cpu a b c d\n", "intr 1\n"} {
		if _, _, _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q): want error", bad)
		}
	}
}

func TestParseMeminfo(t *testing.T) {
	mi, err := parseMeminfo([]byte("MemTotal:       2048 kB\nMemFree: 1 kB\nMemAvailable:   1024 kB\nCached: 10 kB\nSwapCached: 99 kB\nSReclaimable: 6 kB\n"))
	if err != nil {
		t.Fatal(err)
	}
	if mi.total != 2048*1024 || mi.available != 1024*1024 || mi.cached != 10240 || mi.sreclaimable != 6144 {
		t.Fatalf("%+v", mi)
	}
	for _, bad := range []string{"", "MemFree: 1 kB\n", "MemTotal: x kB\n", "MemTotal:\n"} {
		if _, err := parseMeminfo([]byte(bad)); err == nil {
			t.Errorf("parseMeminfo(%q): want error", bad)
		}
	}
}

func TestBusyPct(t *testing.T) {
	cases := []struct {
		dt, di uint64
		want   float64
	}{{0, 0, 0}, {100, 100, 0}, {100, 0, 100}, {3, 2, 33.33}, {3, 1, 66.67}, {10, 20, 0}}
	for _, c := range cases {
		if got := busyPct(c.dt, c.di); got != c.want {
			t.Errorf("busyPct(%d,%d) = %v, want %v", c.dt, c.di, got, c.want)
		}
	}
}

// BenchmarkHandler50 measures /metrics over real loopback HTTP with 50
// concurrent callers and reports the p50/p99 latency.
func BenchmarkHandler50(b *testing.B) {
	s := NewSampler(zap.NewNop(), time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	go s.Run(ctx)
	defer cancel()
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	const callers = 50
	lat := make([]time.Duration, 0, b.N)
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan struct{}, b.N)
	for i := 0; i < b.N; i++ {
		next <- struct{}{}
	}
	close(next)
	b.ResetTimer()
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for range next {
				start := time.Now()
				res, err := client.Get(srv.URL)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkHandlerOnly is the handler's own cost (no network).
func BenchmarkHandlerOnly(b *testing.B) {
	s := NewSampler(zap.NewNop(), time.Hour)
	defer s.Close()
	h := s.Handler()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	b.SetParallelism(25) // 50 goroutines on 2 cores
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
	})
}

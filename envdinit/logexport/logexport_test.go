package logexport

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// collector is a fake host log collector on loopback.
type collector struct {
	mu    sync.Mutex
	lines []map[string]any
	types []string
	got   chan struct{}
	fail  bool
}

func newCollector(t *testing.T) (*collector, *httptest.Server) {
	c := &collector{got: make(chan struct{}, 1000)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c.mu.Lock()
		fail := c.fail
		if !fail {
			var m map[string]any
			if err := json.Unmarshal(body, &m); err != nil {
				t.Errorf("collector got invalid JSON %q: %v", body, err)
			}
			c.lines = append(c.lines, m)
			c.types = append(c.types, r.Header.Get("Content-Type"))
		}
		c.mu.Unlock()
		if fail {
			w.WriteHeader(http.StatusInternalServerError)
		}
		c.got <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	return c, srv
}

func (c *collector) wait(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-c.got:
		case <-time.After(10 * time.Second):
			t.Fatalf("collector got %d of %d lines", i, n)
		}
	}
}

func run(t *testing.T, report io.Writer) *Exporter {
	e := New(report)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

func TestLinesWaitForTheTargetThenShipWithIdentity(t *testing.T) {
	c, srv := newCollector(t)
	e := run(t, io.Discard)
	// Lines logged before MMDS answered are kept and sent once it does.
	_, _ = e.Write([]byte(`{"level":"info","msg":"before"}` + "\n"))
	e.SetTarget(Target{Address: strings.TrimPrefix(srv.URL, "http://"), InstanceID: "i-\"1", EnvID: "env"})
	_, _ = e.Write([]byte(`{"level":"warn","msg":"after","n":2}` + "\n"))
	_, _ = e.Write([]byte(`{}` + "\n"))
	c.wait(t, 3)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lines[0]["msg"] != "before" || c.lines[1]["msg"] != "after" || c.lines[1]["n"] != 2.0 {
		t.Fatalf("lines %v", c.lines)
	}
	for i, l := range c.lines {
		if l["instanceID"] != `i-"1` || l["envID"] != "env" {
			t.Fatalf("line %d lacks the identity: %v", i, l)
		}
		if c.types[i] != "application/json" {
			t.Fatalf("content type %q", c.types[i])
		}
	}
}

func TestOversizeAndOverflowLinesAreDroppedAndReported(t *testing.T) {
	var report bytes.Buffer
	var mu sync.Mutex
	e := New(lockedWriter{&mu, &report})
	big := append([]byte(`{"msg":"`), bytes.Repeat([]byte("x"), MaxLine)...)
	big = append(big, `"}`...)
	_, _ = e.Write(big)
	line := []byte(`{"msg":"` + strings.Repeat("y", 1000) + `"}`)
	for i := 0; i < 2*MaxBuffered/len(line); i++ {
		_, _ = e.Write(line)
	}
	e.mu.Lock()
	buffered, kept, dropped := e.buffered, len(e.lines), e.dropped
	e.mu.Unlock()
	if buffered > MaxBuffered || kept != MaxBuffered/len(line) || dropped != 1+2*MaxBuffered/len(line)-kept {
		t.Fatalf("buffered %d bytes in %d lines, dropped %d", buffered, kept, dropped)
	}
	c, srv := newCollector(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.Run(ctx)
	e.SetTarget(Target{Address: srv.URL, InstanceID: "i", EnvID: "e"})
	c.wait(t, kept)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		r := report.String()
		mu.Unlock()
		if strings.Contains(r, `"dropped":`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("losses were not reported")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAFailingCollectorCostsOnlyItsLines(t *testing.T) {
	c, srv := newCollector(t)
	var report bytes.Buffer
	var mu sync.Mutex
	e := run(t, lockedWriter{&mu, &report})
	e.SetTarget(Target{Address: srv.URL, InstanceID: "i", EnvID: "e"})
	c.mu.Lock()
	c.fail = true
	c.mu.Unlock()
	_, _ = e.Write([]byte(`{"msg":"lost"}`))
	c.wait(t, 1)
	c.mu.Lock()
	c.fail = false
	c.mu.Unlock()
	_, _ = e.Write([]byte(`{"msg":"kept"}`))
	c.wait(t, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.lines) != 1 || c.lines[0]["msg"] != "kept" {
		t.Fatalf("lines %v", c.lines)
	}
}

func TestNoCollectorMeansNothingIsKept(t *testing.T) {
	e := New(io.Discard)
	_, _ = e.Write([]byte(`{"msg":"early"}`))
	e.SetTarget(Target{InstanceID: "i", EnvID: "e"})
	_, _ = e.Write([]byte(`{"msg":"late"}`))
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.lines) != 0 || e.buffered != 0 {
		t.Fatalf("kept %d lines (%d bytes) with no collector", len(e.lines), e.buffered)
	}
}

func TestWithIdentity(t *testing.T) {
	tg := &Target{InstanceID: "a", EnvID: "b"}
	for in, want := range map[string]string{
		`{"x":1}`:   `{"instanceID":"a","envID":"b","x":1}`,
		`{}`:        `{"instanceID":"a","envID":"b"}`,
		` { "x":1}`: `{"instanceID":"a","envID":"b","x":1}`,
	} {
		got, err := withIdentity([]byte(in), tg)
		if err != nil || string(got) != want {
			t.Errorf("%s: got %s, %v", in, got, err)
		}
	}
	for _, bad := range []string{``, `[1]`, `plain text`, `{`} {
		if _, err := withIdentity([]byte(bad), tg); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

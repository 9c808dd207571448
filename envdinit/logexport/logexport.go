// Package logexport ships envd's JSON log lines to the host's log
// collector inside Firecracker (WIRE §9.10); it runs in envd-init, which
// carries its plugins' lines too. Each line, with the sandbox's instanceID and
// envID added, is POSTed to the `address` MMDS publishes.
// The collector is found only after MMDS answers and may be slow or gone,
// so lines wait in a bounded buffer and a failed line is dropped, never
// retried forever: logging must not cost the sandbox memory or block it.
package logexport

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

const (
	// MaxBuffered bounds the bytes of lines waiting to be sent.
	MaxBuffered = 8 << 20
	// MaxLine is the longest line shipped; longer ones are dropped.
	MaxLine = 192 << 10
	// Timeout bounds one POST.
	Timeout = 10 * time.Second
)

// Target is where lines go and what identifies them.
type Target struct {
	Address    string
	InstanceID string
	EnvID      string
}

// Exporter is an io.Writer of whole JSON log lines (one per Write, as zap
// writes them). It is safe for concurrent use.
type Exporter struct {
	client *http.Client
	// report receives the exporter's own troubles; they must not go
	// through the logger that feeds the exporter.
	report io.Writer

	mu       sync.Mutex
	target   *Target
	off      bool // MMDS named no collector: lines are not kept
	lines    [][]byte
	buffered int
	dropped  int // lines lost to the bounds since the last report
	failed   int // lines the collector did not take since the last report
	wake     chan struct{}
}

// New returns an exporter; Run sends what it collects.
func New(report io.Writer) *Exporter {
	if report == nil {
		report = os.Stderr
	}
	return &Exporter{
		client: &http.Client{Timeout: Timeout},
		report: report,
		wake:   make(chan struct{}, 1),
	}
}

// SetTarget starts (or redirects) shipping. Until the first call, lines
// wait within the bound; an empty address (MMDS names no collector) turns
// the exporter off and frees what waited.
func (e *Exporter) SetTarget(t Target) {
	e.mu.Lock()
	if t.Address == "" {
		e.target, e.off = nil, true
		e.lines, e.buffered = nil, 0
	} else {
		e.target, e.off = &t, false
	}
	e.mu.Unlock()
	e.poke()
}

// Write queues one line. It never blocks on the network and never fails:
// a line that does not fit is counted and dropped.
func (e *Exporter) Write(p []byte) (int, error) {
	line := bytes.TrimRight(p, "\n")
	e.mu.Lock()
	if e.off {
		e.mu.Unlock()
		return len(p), nil
	}
	if len(line) == 0 || len(line) > MaxLine || e.buffered+len(line) > MaxBuffered {
		if len(line) > 0 {
			e.dropped++
		}
		e.mu.Unlock()
		return len(p), nil
	}
	e.lines = append(e.lines, bytes.Clone(line))
	e.buffered += len(line)
	e.mu.Unlock()
	e.poke()
	return len(p), nil
}

// Sync implements zapcore.WriteSyncer; lines are sent asynchronously.
func (e *Exporter) Sync() error { return nil }

func (e *Exporter) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Run sends queued lines until ctx ends.
func (e *Exporter) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.wake:
		}
		for {
			t, batch := e.take()
			if t == nil || len(batch) == 0 {
				break
			}
			for _, line := range batch {
				if err := e.send(ctx, t, line); err != nil {
					if ctx.Err() != nil {
						return
					}
					e.mu.Lock()
					e.failed++
					e.mu.Unlock()
				}
			}
			e.reportLosses()
		}
	}
}

// take removes every queued line, if there is a target to send them to.
func (e *Exporter) take() (*Target, [][]byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.target == nil {
		return nil, nil
	}
	batch := e.lines
	e.lines, e.buffered = nil, 0
	return e.target, batch
}

func (e *Exporter) reportLosses() {
	e.mu.Lock()
	dropped, failed := e.dropped, e.failed
	e.dropped, e.failed = 0, 0
	e.mu.Unlock()
	if dropped > 0 || failed > 0 {
		fmt.Fprintf(e.report, `{"level":"warn","logger":"envd-init.logexport","msg":"log lines not exported","dropped":%d,"failed":%d}`+"\n", dropped, failed)
	}
}

func (e *Exporter) send(ctx context.Context, t *Target, line []byte) error {
	body, err := withIdentity(line, t)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, collectorURL(t.Address), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("log collector request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := e.client.Do(req)
	if err != nil {
		return fmt.Errorf("log collector: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
	if res.StatusCode >= 300 {
		return fmt.Errorf("log collector answered %s", res.Status)
	}
	return nil
}

// collectorURL accepts the address as MMDS gives it: a URL, or host:port.
func collectorURL(addr string) string {
	if strings.Contains(addr, "://") {
		return addr
	}
	return "http://" + addr
}

// withIdentity adds instanceID and envID as the first keys of a JSON
// object line.
func withIdentity(line []byte, t *Target) ([]byte, error) {
	trimmed := bytes.TrimLeft(line, " \t")
	if len(trimmed) < 2 || trimmed[0] != '{' {
		return nil, fmt.Errorf("log line is not a JSON object")
	}
	id, _ := json.Marshal(t.InstanceID)
	env, _ := json.Marshal(t.EnvID)
	out := make([]byte, 0, len(trimmed)+len(id)+len(env)+32)
	out = append(out, `{"instanceID":`...)
	out = append(out, id...)
	out = append(out, `,"envID":`...)
	out = append(out, env...)
	rest := bytes.TrimLeft(trimmed[1:], " \t\r\n")
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...), nil
}

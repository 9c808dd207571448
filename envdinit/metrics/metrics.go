// Package metrics serves GET /metrics (WIRE.md §7.2, §9.2) from a background
// sampler; it runs in envd-init. The handler only copies the newest cached
// sample, so it never blocks on /proc and the CPU figure does not depend on how
// often it is polled.
package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// DefaultInterval is the sampling period of §9.2.
const DefaultInterval = time.Second

// Snapshot is one sample, with the JSON keys and units of §7.2.
type Snapshot struct {
	TS          int64   `json:"ts"`
	CPUCount    int     `json:"cpu_count"`
	CPUUsedPct  float64 `json:"cpu_used_pct"`
	MemTotalMiB uint64  `json:"mem_total_mib"`
	MemUsedMiB  uint64  `json:"mem_used_mib"`
	MemTotal    uint64  `json:"mem_total"`
	MemUsed     uint64  `json:"mem_used"`
	// MemCache is E2B's; nil (omitted) when the sampler was built without it.
	MemCache  *uint64 `json:"mem_cache,omitempty"`
	DiskUsed  uint64  `json:"disk_used"`
	DiskTotal uint64  `json:"disk_total"`
}

type cached struct {
	snap Snapshot
	body []byte // JSON with trailing newline, served as is
	err  error
}

// Option configures a Sampler.
type Option func(*Sampler)

// WithMemCache chooses whether mem_cache is reported (default true: E2B
// reports it; Wrenn clients ignore unknown keys).
func WithMemCache(on bool) Option { return func(s *Sampler) { s.memCache = on } }

// WithDiskPath changes the filesystem whose usage is reported (default "/").
func WithDiskPath(p string) Option { return func(s *Sampler) { s.diskPath = p } }

// Sampler keeps /proc/stat and /proc/meminfo open and re-reads them every
// interval.
type Sampler struct {
	log      *zap.Logger
	interval time.Duration
	memCache bool
	diskPath string
	now      func() time.Time

	mu        sync.Mutex // one sample at a time; guards everything below
	stat      *os.File
	meminfo   *os.File
	buf       []byte
	prevTotal uint64
	prevIdle  uint64
	lastPct   float64
	closed    bool

	cur atomic.Pointer[cached]
}

// NewSampler takes a first sample at once (CPU busy since boot), so the
// handler has data before the first tick.
func NewSampler(log *zap.Logger, interval time.Duration, opts ...Option) *Sampler {
	if log == nil {
		log = zap.NewNop()
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	s := &Sampler{log: log, interval: interval, memCache: true, diskPath: "/", now: time.Now, buf: make([]byte, 0, 16<<10)}
	for _, o := range opts {
		o(s)
	}
	s.sample()
	return s
}

// Run samples every interval until ctx ends, then releases the files.
func (s *Sampler) Run(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	defer s.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sample()
		}
	}
}

// Close releases the /proc files; the last sample stays served.
func (s *Sampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var errs []error
	for _, f := range []**os.File{&s.stat, &s.meminfo} {
		if *f != nil {
			errs = append(errs, (*f).Close())
			*f = nil
		}
	}
	return errors.Join(errs...)
}

// Snapshot returns the newest sample, or the error of the newest attempt.
func (s *Sampler) Snapshot() (Snapshot, error) {
	c := s.cur.Load()
	if c == nil {
		return Snapshot{}, errors.New("no sample yet")
	}
	return c.snap, c.err
}

// Handler serves the cached sample: 200 JSON, or 500 with an empty body
// when the newest collection failed.
func (s *Sampler) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		c := s.cur.Load()
		if c == nil || c.err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(c.body)))
		_, _ = w.Write(c.body)
	})
}

func (s *Sampler) sample() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	snap, err := s.collectLocked()
	c := &cached{snap: snap, err: err}
	if err == nil {
		body, merr := json.Marshal(snap)
		if merr != nil {
			c.err = fmt.Errorf("encode metrics: %w", merr)
		} else {
			c.body = append(body, '\n')
		}
	}
	if c.err != nil {
		if prev := s.cur.Load(); prev == nil || prev.err == nil {
			s.log.Warn("metrics sample failed", zap.Error(c.err))
		}
	}
	s.cur.Store(c)
}

func (s *Sampler) collectLocked() (Snapshot, error) {
	snap := Snapshot{TS: s.now().UTC().Unix()}

	data, err := s.readLocked(&s.stat, "/proc/stat")
	if err != nil {
		return snap, err
	}
	total, idle, ncpu, err := parseStat(data)
	if err != nil {
		return snap, err
	}
	snap.CPUCount = ncpu
	if dt := total - s.prevTotal; total > s.prevTotal {
		di := idle - s.prevIdle
		if idle < s.prevIdle {
			di = 0
		}
		s.lastPct = busyPct(dt, di)
	}
	s.prevTotal, s.prevIdle = total, idle
	snap.CPUUsedPct = s.lastPct

	data, err = s.readLocked(&s.meminfo, "/proc/meminfo")
	if err != nil {
		return snap, err
	}
	mi, err := parseMeminfo(data)
	if err != nil {
		return snap, err
	}
	snap.MemTotal = mi.total
	if mi.total > mi.available {
		snap.MemUsed = mi.total - mi.available
	}
	snap.MemTotalMiB = snap.MemTotal / (1 << 20)
	snap.MemUsedMiB = snap.MemUsed / (1 << 20)
	if s.memCache {
		c := mi.cached + mi.sreclaimable
		snap.MemCache = &c
	}

	var st unix.Statfs_t
	if err := unix.Statfs(s.diskPath, &st); err != nil {
		return snap, fmt.Errorf("statfs %s: %w", s.diskPath, err)
	}
	bsize := uint64(st.Bsize)
	snap.DiskTotal = st.Blocks * bsize
	if free := st.Bavail * bsize; snap.DiskTotal > free {
		snap.DiskUsed = snap.DiskTotal - free
	}
	return snap, nil
}

// readLocked re-reads a persistent /proc file from its start, reopening it
// if a previous read failed.
func (s *Sampler) readLocked(f **os.File, name string) ([]byte, error) {
	if *f == nil {
		nf, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", name, err)
		}
		*f = nf
	}
	if _, err := (*f).Seek(0, io.SeekStart); err != nil {
		(*f).Close()
		*f = nil
		return nil, fmt.Errorf("rewind %s: %w", name, err)
	}
	s.buf = s.buf[:0]
	for {
		if len(s.buf) == cap(s.buf) {
			s.buf = append(s.buf, 0)[:len(s.buf)]
		}
		n, err := (*f).Read(s.buf[len(s.buf):cap(s.buf)])
		s.buf = s.buf[:len(s.buf)+n]
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return s.buf, nil
		}
		if err != nil {
			(*f).Close()
			*f = nil
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
	}
}

// busyPct is the busy share of a jiffy delta, 0–100, rounded to 2 decimals.
func busyPct(dTotal, dIdle uint64) float64 {
	if dTotal == 0 {
		return 0
	}
	if dIdle > dTotal {
		dIdle = dTotal
	}
	p := float64(dTotal-dIdle) / float64(dTotal) * 100
	p = math.Round(p*100) / 100
	return math.Max(0, math.Min(100, p))
}

// parseStat sums the aggregate "cpu" line of /proc/stat. guest and
// guest_nice are already inside user and nice, so they are left out; iowait
// counts as idle. ncpu counts the per-CPU lines (online CPUs).
func parseStat(data []byte) (total, idle uint64, ncpu int, err error) {
	found := false
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if !bytes.HasPrefix(line, []byte("cpu")) {
			continue
		}
		if len(line) > 3 && line[3] >= '0' && line[3] <= '9' {
			ncpu++
			continue
		}
		if len(line) <= 3 || line[3] != ' ' {
			continue
		}
		fields := bytes.Fields(line[3:])
		if len(fields) < 4 {
			return 0, 0, 0, fmt.Errorf("parse /proc/stat: short cpu line %q", line)
		}
		for i, f := range fields {
			if i >= 8 { // guest, guest_nice
				break
			}
			v, perr := strconv.ParseUint(string(f), 10, 64)
			if perr != nil {
				return 0, 0, 0, fmt.Errorf("parse /proc/stat field %d: %w", i, perr)
			}
			total += v
			if i == 3 || i == 4 { // idle, iowait
				idle += v
			}
		}
		found = true
	}
	if !found {
		return 0, 0, 0, errors.New("parse /proc/stat: no aggregate cpu line")
	}
	return total, idle, ncpu, nil
}

type memInfo struct{ total, available, cached, sreclaimable uint64 }

// parseMeminfo reads the four fields §7.2 needs, in bytes.
func parseMeminfo(data []byte) (memInfo, error) {
	var mi memInfo
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		var dst *uint64
		switch string(line[:colon]) {
		case "MemTotal":
			dst = &mi.total
		case "MemAvailable":
			dst = &mi.available
		case "Cached":
			dst = &mi.cached
		case "SReclaimable":
			dst = &mi.sreclaimable
		default:
			continue
		}
		f := bytes.Fields(line[colon+1:])
		if len(f) == 0 {
			return mi, fmt.Errorf("parse /proc/meminfo: empty %s", line[:colon])
		}
		v, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil {
			return mi, fmt.Errorf("parse /proc/meminfo %s: %w", line[:colon], err)
		}
		if len(f) > 1 && string(f[1]) == "kB" {
			v *= 1024
		}
		*dst = v
	}
	if mi.total == 0 {
		return mi, errors.New("parse /proc/meminfo: MemTotal missing")
	}
	return mi, nil
}

package stress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"connectrpc.com/connect"
)

// trace is what the transport saw of one call: whether any response came
// back, and whether its body ended cleanly. It is how the suite tells a
// status (any HTTP response, any Connect error the server wrote) from an
// empty reply or a cut stream.
type trace struct {
	mu      sync.Mutex
	resp    bool
	bodyErr error
}

type traceKey struct{}

func withTrace(ctx context.Context) (context.Context, *trace) {
	tr := &trace{}
	return context.WithValue(ctx, traceKey{}, tr), tr
}

// tracing records every request's outcome into the trace of its context.
type tracing struct{ next http.RoundTripper }

func (t tracing) RoundTrip(req *http.Request) (*http.Response, error) {
	tr, _ := req.Context().Value(traceKey{}).(*trace)
	res, err := t.next.RoundTrip(req)
	if tr == nil || err != nil {
		return res, err
	}
	tr.mu.Lock()
	tr.resp = true
	tr.mu.Unlock()
	res.Body = &tracedBody{ReadCloser: res.Body, tr: tr}
	return res, nil
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// transport under the tracer.
func (t tracing) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

type tracedBody struct {
	io.ReadCloser
	tr *trace
}

func (b *tracedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		b.tr.mu.Lock()
		if b.tr.bodyErr == nil {
			b.tr.bodyErr = err
		}
		b.tr.mu.Unlock()
	}
	return n, err
}

// Outcome classes of a call.
const (
	classOK        = "ok"
	classDeadline  = "client-deadline" // our own deadline or cancel ended it
	classNoReply   = "no-reply"        // no response at all (curl: "Empty reply from server")
	classTruncated = "truncated"       // a response whose body broke off without a status
	classHung      = "hung"            // returned long after its deadline
	classWrong     = "wrong-answer"    // an answer that breaks the contract (no end event, other bytes)
	// classFSKilled is added to no-reply and truncated for a handed-off
	// call during which envd-fs was killed with SIGKILL (accepted).
	classFSKilled = " (envd-fs killed in flight)"
)

// wrongAnswer is an answer that came with no error yet breaks the contract.
type wrongAnswer struct{ msg string }

func (e *wrongAnswer) Error() string { return e.msg }

func wrong(format string, args ...any) error { return &wrongAnswer{fmt.Sprintf(format, args...)} }

// classify turns a call's error into its class ("status:<code>" for an
// answer the server gave).
func classify(ctx context.Context, tr *trace, err error) string {
	if err == nil {
		return classOK
	}
	var wa *wrongAnswer
	if errors.As(err, &wa) {
		return classWrong
	}
	if ctx.Err() != nil {
		return classDeadline
	}
	tr.mu.Lock()
	resp, bodyErr := tr.resp, tr.bodyErr
	tr.mu.Unlock()
	if !resp {
		return classNoReply
	}
	if bodyErr != nil {
		return classTruncated
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return "status:" + ce.Code().String()
	}
	var he *httpStatus
	if errors.As(err, &he) {
		return "status:" + strconv.Itoa(he.code)
	}
	// A response came and its body ended cleanly, yet no status: a
	// protocol error of the answer itself.
	return classTruncated
}

// httpStatus is a /files answer other than 200.
type httpStatus struct {
	code int
	body string
}

func (e *httpStatus) Error() string { return fmt.Sprintf("HTTP %d: %.200s", e.code, e.body) }

// tally counts outcomes per operation and class.
type tally struct {
	mu     sync.Mutex
	counts map[string]map[string]int // op → class → n
	notes  map[string][]string       // class → a few examples
	calls  atomic.Int64
}

func newTally() *tally {
	return &tally{counts: map[string]map[string]int{}, notes: map[string][]string{}}
}

func (t *tally) add(op, class, note string) {
	t.calls.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts[op] == nil {
		t.counts[op] = map[string]int{}
	}
	t.counts[op][class]++
	if note != "" && len(t.notes[class]) < 5 {
		t.notes[class] = append(t.notes[class], op+": "+note)
	}
}

func (t *tally) total(class string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, byClass := range t.counts {
		n += byClass[class]
	}
	return n
}

func (t *tally) totalWhere(op func(string) bool, class string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for o, byClass := range t.counts {
		if op(o) {
			n += byClass[class]
		}
	}
	return n
}

// usage is one process's resources at one moment.
type usage struct {
	pid     int
	threads int
	fds     int
	pssKiB  int
}

func (u usage) String() string {
	return fmt.Sprintf("pid %-7d threads %-4d fds %-4d PSS %6.1f MiB", u.pid, u.threads, u.fds, float64(u.pssKiB)/1024)
}

func sample(pid int) (usage, error) {
	u := usage{pid: pid}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			u.threads, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return u, err
	}
	u.fds = len(fds)
	rollup, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(rollup), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			u.pssKiB, _ = strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		}
	}
	return u, nil
}

// procInfo is one line of /proc/<pid>/stat.
type procInfo struct {
	pid, ppid int
	state     byte
	comm      string
}

func readProc(pid int) (procInfo, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procInfo{}, false
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < 0 || end+4 > len(s) {
		return procInfo{}, false
	}
	f := strings.Fields(s[end+2:])
	if len(f) < 2 {
		return procInfo{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	return procInfo{pid: pid, ppid: ppid, state: f[0][0], comm: s[open+1 : end]}, true
}

// descendants lists every process below root.
func descendants(root int) []procInfo {
	ents, _ := filepath.Glob("/proc/[0-9]*")
	children := map[int][]procInfo{}
	for _, e := range ents {
		pid, err := strconv.Atoi(filepath.Base(e))
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			children[p.ppid] = append(children[p.ppid], p)
		}
	}
	var out []procInfo
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// signal sends sig to pid, ignoring a process that is already gone.
func signal(pid int, sig syscall.Signal) bool {
	return pid > 0 && syscall.Kill(pid, sig) == nil
}

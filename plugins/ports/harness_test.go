package ports

// The network-namespace harness: a "vm" and a "host" namespace joined by a
// veth (169.254.0.21/30 and fd00:e2b::1/64 in vm, .22 and ::2 in host). The
// Manager runs in a helper process inside vm (this test binary re-executed
// under `ip netns exec`, so /proc/net/tcp and every socket it opens are the
// vm's); the test dials from the host namespace on a thread moved there with
// setns. No traffic leaves the two namespaces, and both are deleted at the end.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

const (
	helperEnv     = "ENVD_PORTS_HELPER"
	helperOptsEnv = "ENVD_PORTS_HELPER_OPTS"
)

var (
	vmAddr4 = netip.MustParseAddr("169.254.0.21")
	vmAddr6 = netip.MustParseAddr("fd00:e2b::1")
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	os.Exit(m.Run())
}

// netns is one vm/host namespace pair.
type netns struct {
	vm, host string
	vmLink   string
	hostNS   *os.File
	ipv6     bool
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// newNetns creates the namespace pair, or skips the test saying why it cannot.
func newNetns(tb testing.TB) *netns {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: creating network namespaces needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("skipping: the ip command (iproute2) is not installed")
	}
	removeStaleNetns(tb)
	var rnd [4]byte
	rand.Read(rnd[:])
	link := hex.EncodeToString(rnd[:])
	// The pid in the names lets a later run remove what a killed run left.
	id := fmt.Sprintf("%d-%s", os.Getpid(), link)
	n := &netns{vm: "envdtest-vm-" + id, host: "envdtest-host-" + id, vmLink: "ev" + link + "v"}
	hostLink := "ev" + link + "h"

	// The kernel's TCP socket table is global and sized for this machine's
	// memory (262144 buckets on a 24 GiB host), and /proc/net/tcp walks all
	// of it. A parent namespace with tcp_child_ehash_entries=8192 gives vm
	// and host their own table of the size a 1 GiB VM gets, so scan costs
	// here are those of a VM. Without nsenter the global table is used.
	parent := "envdtest-p-" + id
	if err := ipCmd("netns", "add", parent); err != nil {
		tb.Skipf("skipping: cannot create a network namespace here: %v", err)
	}
	tb.Cleanup(func() { ipCmd("netns", "del", parent) })
	addNS := func(name string) error { return ipCmd("netns", "add", name) }
	if out, err := exec.Command("nsenter", "--net=/run/netns/"+parent,
		"sysctl", "-qw", "net.ipv4.tcp_child_ehash_entries=8192").CombinedOutput(); err != nil {
		tb.Logf("namespaces share the global TCP table (%v: %s)", err, bytes.TrimSpace(out))
	} else {
		addNS = func(name string) error {
			out, err := exec.Command("nsenter", "--net=/run/netns/"+parent, "ip", "netns", "add", name).CombinedOutput()
			if err != nil {
				return fmt.Errorf("ip netns add %s in %s: %w: %s", name, parent, err, bytes.TrimSpace(out))
			}
			return nil
		}
	}
	if err := addNS(n.vm); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ipCmd("netns", "del", n.vm) })
	if err := addNS(n.host); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ipCmd("netns", "del", n.host) })

	// The veth is created inside vm with its peer sent straight to host, so
	// the machine's own namespace never sees either end.
	steps := [][]string{
		{"-n", n.vm, "link", "add", n.vmLink, "type", "veth", "peer", "name", hostLink, "netns", n.host},
		{"-n", n.vm, "link", "set", "lo", "up"},
		{"-n", n.host, "link", "set", "lo", "up"},
		{"-n", n.vm, "addr", "add", "169.254.0.21/30", "dev", n.vmLink},
		{"-n", n.host, "addr", "add", "169.254.0.22/30", "dev", hostLink},
		{"-n", n.vm, "link", "set", n.vmLink, "up"},
		{"-n", n.host, "link", "set", hostLink, "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			tb.Fatal(err)
		}
	}
	n.ipv6 = true
	for _, s := range [][]string{
		{"-n", n.vm, "addr", "add", "fd00:e2b::1/64", "dev", n.vmLink, "nodad"},
		{"-n", n.host, "addr", "add", "fd00:e2b::2/64", "dev", hostLink, "nodad"},
	} {
		if err := ipCmd(s...); err != nil {
			tb.Logf("no IPv6 in the test namespaces, IPv6 checks skipped: %v", err)
			n.ipv6 = false
			break
		}
	}
	f, err := os.Open("/run/netns/" + n.host)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	n.hostNS = f
	return n
}

// removeStaleNetns deletes the namespaces of test runs that died without
// their cleanup (a test binary killed on timeout): those whose pid is gone.
func removeStaleNetns(tb testing.TB) {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), "envdtest-")
		if !ok {
			continue
		}
		f := strings.Split(rest, "-")
		if len(f) != 3 {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			tb.Logf("removing stale namespace %s", e.Name())
			ipCmd("netns", "del", e.Name())
		}
	}
}

// dial connects from the host namespace. The socket is created on an OS
// thread that setns moved into host and stays there for its whole life.
func (n *netns) dial(addr string) (*net.TCPConn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(n.hostNS.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("setns host: %w", err)}
			return
		}
		c, err := (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", addr)
		ch <- result{c, err}
		// A thread left in the other namespace must die with this goroutine,
		// so it is unlocked only once it is back.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	return r.c.(*net.TCPConn), nil
}

// helper is the helper process in the vm namespace.
type helper struct {
	tb     testing.TB
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *syncBuffer
	mu     sync.Mutex
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (n *netns) startHelper(tb testing.TB, opts Options) *helper {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	o, err := json.Marshal(opts)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", n.vm, exe)
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperOptsEnv+"="+string(o))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	h := &helper{tb: tb, cmd: cmd, lines: make(chan string, 16), stderr: &syncBuffer{}}
	cmd.Stderr = h.stderr
	if h.stdin, err = cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		defer close(h.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
	}()
	tb.Cleanup(func() {
		h.stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if tb.Failed() || os.Getenv("ENVD_PORTS_HELPER_LOG") != "" {
			tb.Logf("helper log:\n%s", h.stderr.String())
		}
	})
	h.do("ping")
	return h
}

// do sends one command and returns the reply after "ok ".
func (h *helper) do(format string, args ...any) string {
	h.tb.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	line := fmt.Sprintf(format, args...)
	if _, err := fmt.Fprintln(h.stdin, line); err != nil {
		h.tb.Fatalf("helper %q: %v\n%s", line, err, h.stderr.String())
	}
	select {
	case r, ok := <-h.lines:
		if !ok {
			h.tb.Fatalf("helper %q: helper exited\n%s", line, h.stderr.String())
		}
		if rest, ok := strings.CutPrefix(r, "ok"); ok {
			return strings.TrimSpace(rest)
		}
		h.tb.Fatalf("helper %q: %s", line, r)
	case <-time.After(30 * time.Second):
		h.tb.Fatalf("helper %q: no reply in 30 s\n%s", line, h.stderr.String())
	}
	return ""
}

// listen starts a test server in vm on addr ("127.0.0.1:0"); it returns the
// port and the time listen() returned.
func (h *helper) listen(addr string) (uint16, time.Time) {
	h.tb.Helper()
	var port uint16
	var ns int64
	if _, err := fmt.Sscan(h.do("listen %s", addr), &port, &ns); err != nil {
		h.tb.Fatal(err)
	}
	return port, time.Unix(0, ns)
}

func (h *helper) forwards() []Forward {
	h.tb.Helper()
	var fw []Forward
	if err := json.Unmarshal([]byte(h.do("fwds")), &fw); err != nil {
		h.tb.Fatal(err)
	}
	return fw
}

func (h *helper) setOptions(o Options) {
	h.tb.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		h.tb.Fatal(err)
	}
	h.do("opts %s", b)
}

// helperMain is the helper process: a Manager plus test servers, steered by
// one command per line on stdin, answered by one line on stdout.
func helperMain() int {
	var opts Options
	if err := json.Unmarshal([]byte(os.Getenv(helperOptsEnv)), &opts); err != nil {
		fmt.Fprintln(os.Stderr, "helper options:", err)
		return 2
	}
	cfg := zap.NewDevelopmentConfig()
	cfg.OutputPaths = []string{"stderr"}
	log, err := cfg.Build()
	if err != nil {
		return 2
	}
	baseGoroutines := runtime.NumGoroutine()
	m := New(log, opts)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- m.Run(ctx) }()
	defer cancel()

	servers := make(map[uint16][]*testServer) // per port, in start order
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(nil, 1<<20)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		reply := func(format string, args ...any) { fmt.Printf("ok "+format+"\n", args...) }
		fail := func(err error) { fmt.Printf("error %v\n", err) }
		switch f[0] {
		case "ping":
			reply("")
		case "listen":
			s, err := startTestServer(f[1])
			if err != nil {
				fail(err)
				continue
			}
			servers[s.port] = append(servers[s.port], s)
			reply("%d %d", s.port, s.listened.UnixNano())
		case "close":
			p, _ := strconv.Atoi(f[1])
			// The latest server on that port stops.
			if ss := servers[uint16(p)]; len(ss) > 0 {
				ss[len(ss)-1].close()
				servers[uint16(p)] = ss[:len(ss)-1]
			}
			reply("")
		case "fwds":
			b, _ := json.Marshal(m.Snapshot())
			reply("%s", b)
		case "opts":
			var o Options
			if err := json.Unmarshal([]byte(strings.TrimPrefix(in.Text(), "opts ")), &o); err != nil {
				fail(err)
				continue
			}
			m.SetOptions(o)
			reply("")
		case "pause":
			m.Pause()
			reply("")
		case "resume":
			m.Resume()
			reply("")
		case "mem":
			n, _ := strconv.Atoi(f[1])
			r, err := measureForwardCost(m, n)
			if err != nil {
				fail(err)
				continue
			}
			b, _ := json.Marshal(r)
			reply("%s", b)
		case "scancost":
			// Mean cost of one Scan of this namespace's tables.
			k, _ := strconv.Atoi(f[1])
			sc := NewScanner("")
			start := time.Now()
			var err error
			for range k {
				if _, _, err = sc.Scan(); err != nil {
					break
				}
			}
			if err != nil {
				fail(err)
				continue
			}
			reply("%d", time.Since(start).Nanoseconds()/int64(max(k, 1)))
		case "stats":
			b, _ := json.Marshal(processStats())
			reply("%s", b)
		case "stop":
			// Stop the Manager while it relays, then count what it left
			// behind: once the test servers are closed too, the goroutine
			// count must return to where it was before New.
			cancel()
			select {
			case err := <-runDone:
				if err != nil {
					fail(err)
					continue
				}
			case <-time.After(10 * time.Second):
				fail(errors.New("Run did not return within 10 s"))
				continue
			}
			for p, ss := range servers {
				for _, s := range ss {
					s.close()
				}
				delete(servers, p)
			}
			var n int
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				n = runtime.NumGoroutine()
				if n <= baseGoroutines || time.Now().After(deadline) {
					break
				}
			}
			if n > baseGoroutines {
				buf := make([]byte, 1<<20)
				fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", buf[:runtime.Stack(buf, true)])
			}
			reply("%d %d %d", baseGoroutines, n, len(m.Snapshot()))
		default:
			fail(fmt.Errorf("unknown command %q", f[0]))
		}
	}
	return 0
}

// testServer serves one connection protocol chosen by the first byte:
// 'e' echoes until EOF and then half-closes; 's' swallows until EOF and answers
// the byte count (8 bytes, big endian); 'g' reads an 8-byte count n and sends
// n bytes of pattern(i).
type testServer struct {
	port     uint16
	listened time.Time
	ln       net.Listener
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

func pattern(i int64) byte { return byte(i*7 + i>>9) }

func startTestServer(addr string) (*testServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &testServer{
		port:     uint16(ln.Addr().(*net.TCPAddr).Port),
		listened: time.Now(),
		ln:       ln,
		conns:    make(map[net.Conn]struct{}),
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				s.serve(c.(*net.TCPConn))
			}()
		}
	}()
	return s, nil
}

func (s *testServer) serve(c *net.TCPConn) {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case 'e':
		if _, err := io.Copy(c, c); err == nil {
			c.CloseWrite()
			io.Copy(io.Discard, c)
		}
	case 's':
		n, err := io.Copy(io.Discard, c)
		if err == nil {
			binary.Write(c, binary.BigEndian, n)
		}
	case 'g':
		var n int64
		if binary.Read(c, binary.BigEndian, &n) != nil {
			return
		}
		buf := make([]byte, 64<<10)
		for i := range buf {
			buf[i] = pattern(int64(i))
		}
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := c.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
		c.CloseWrite()
	}
}

func (s *testServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// forwardCost is the memory an idle forward costs (measured in the helper).
type forwardCost struct {
	N                  int
	GoroutinesPerFwd   float64
	HeapBytesPerFwd    float64
	StackBytesPerFwd   float64
	FDsPerFwd          float64
	ListenersHeapBytes float64 // what the test's own N loopback listeners cost, not counted above
}

func countFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

func measureForwardCost(m *Manager, n int) (forwardCost, error) {
	m.Pause()
	var ms0, ms1, ms2 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return forwardCost{}, err
		}
		lns = append(lns, ln)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	g1, fd1 := runtime.NumGoroutine(), countFDs()
	m.Resume()
	deadline := time.Now().Add(30 * time.Second)
	for {
		up := 0
		for _, f := range m.Snapshot() {
			up += len(f.Listening)
		}
		if up >= n {
			break
		}
		if time.Now().After(deadline) {
			return forwardCost{}, fmt.Errorf("only %d of %d forwards up after 30 s", up, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms2)
	g2, fd2 := runtime.NumGoroutine(), countFDs()
	fn := float64(n)
	return forwardCost{
		N:                  n,
		GoroutinesPerFwd:   float64(g2-g1) / fn,
		HeapBytesPerFwd:    (float64(ms2.HeapAlloc) - float64(ms1.HeapAlloc)) / fn,
		StackBytesPerFwd:   (float64(ms2.StackInuse) - float64(ms1.StackInuse)) / fn,
		FDsPerFwd:          float64(fd2-fd1) / fn,
		ListenersHeapBytes: (float64(ms1.HeapAlloc) - float64(ms0.HeapAlloc)) / fn,
	}, nil
}

// procStats is what the helper process holds now, after a GC.
type procStats struct {
	Goroutines, FDs int
	Heap, Stack     uint64
}

func processStats() procStats {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return procStats{Goroutines: runtime.NumGoroutine(), FDs: countFDs(), Heap: ms.HeapAlloc, Stack: ms.StackInuse}
}

func (h *helper) stats() procStats {
	h.tb.Helper()
	var s procStats
	if err := json.Unmarshal([]byte(h.do("stats")), &s); err != nil {
		h.tb.Fatal(err)
	}
	return s
}

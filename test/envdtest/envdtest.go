// Package envdtest starts the real envd bundle for integration tests and
// benchmarks, and builds the clients of every protocol envd serves.
// Test-only: no envd process imports it.
package envdtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
)

var (
	buildOnce sync.Once
	bundleDir string
	buildErr  error
)

// Bundle returns the directory of a built bundle: $ENVD_BUNDLE, else one
// built once into a temporary directory.
func Bundle() (string, error) {
	buildOnce.Do(func() {
		if dir := os.Getenv("ENVD_BUNDLE"); dir != "" {
			bundleDir = dir
			return
		}
		dir, err := os.MkdirTemp("", "envd-bundle-")
		if err != nil {
			buildErr = err
			return
		}
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "envd-init"), "./cmd/envd-init")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building bundle: %v\n%s", err, out)
			return
		}
		for _, p := range []string{"envd-proc", "envd-fs", "envd-net"} {
			if err := os.Link(filepath.Join(dir, "envd-init"), filepath.Join(dir, p)); err != nil {
				buildErr = err
				return
			}
		}
		bundleDir = dir
	})
	return bundleDir, buildErr
}

func moduleRoot() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found")
		}
		dir = parent
	}
}

// Envd is one running envd-init tree.
type Envd struct {
	Cmd  *exec.Cmd
	Port int
	URL  string
	log  *LockedBuffer
	done chan struct{}
	err  error
	// reattached plugins were started by hand (--reattach): not children.
	reattached map[string]bool
}

// LockedBuffer is a bytes.Buffer that a process's output and a test may
// use at once.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// FreePort returns a TCP port that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Start runs envd-init with --isnotfc --no-cgroups on a free port plus the
// extra flags, and waits for its /health. The tree is stopped at cleanup.
func Start(tb testing.TB, flags ...string) *Envd {
	tb.Helper()
	e, err := StartE(flags...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := e.Stop(); err != nil {
			tb.Errorf("stopping envd: %v\n%s", err, e.Log())
		}
		if tb.Failed() {
			tb.Logf("envd log:\n%s", e.Log())
		}
	})
	return e
}

// StartWithFiles is Start with files envd-init inherits from its launcher
// (as fds 3, 4, …, not close-on-exec).
func StartWithFiles(tb testing.TB, files []*os.File, flags ...string) *Envd {
	tb.Helper()
	e, err := startE(files, flags)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := e.Stop(); err != nil {
			tb.Errorf("stopping envd: %v\n%s", err, e.Log())
		}
	})
	return e
}

// StartE is Start without a testing.TB (benchmarks, tools).
func StartE(flags ...string) (*Envd, error) { return startE(nil, flags) }

func startE(files []*os.File, flags []string) (*Envd, error) {
	dir, err := Bundle()
	if err != nil {
		return nil, err
	}
	return startFrom(dir, files, flags)
}

// StartFrom is Start with the bundle in dir (a test that replaces a
// plugin's file must not touch the shared bundle).
func StartFrom(tb testing.TB, dir string, flags ...string) *Envd {
	tb.Helper()
	e, err := StartFromE(dir, flags...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := e.Stop(); err != nil {
			tb.Errorf("stopping envd: %v\n%s", err, e.Log())
		}
		if tb.Failed() {
			tb.Logf("envd log:\n%s", e.Log())
		}
	})
	return e
}

// StartFromE is StartFrom without a testing.TB.
func StartFromE(dir string, flags ...string) (*Envd, error) { return startFrom(dir, nil, flags) }

func startFrom(dir string, files []*os.File, flags []string) (*Envd, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	args := append([]string{"--isnotfc", "--port", strconv.Itoa(port)}, flags...)
	if !hasFlag(flags, "--cgroup-root") {
		args = append(args, "--no-cgroups")
	}
	e := &Envd{Port: port, URL: fmt.Sprintf("http://127.0.0.1:%d", port), log: &LockedBuffer{}, done: make(chan struct{}), reattached: reattachedPlugins(flags)}
	e.Cmd = exec.Command(filepath.Join(dir, "envd-init"), args...)
	e.Cmd.Stdout, e.Cmd.Stderr = e.log, e.log
	e.Cmd.ExtraFiles = files
	e.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := e.Cmd.Start(); err != nil {
		return nil, err
	}
	go func() { e.err = e.Cmd.Wait(); close(e.done) }()
	if err := e.WaitHealthy(15 * time.Second); err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("%w\n%s", err, e.Log())
	}
	return e, nil
}

// reattachedPlugins names the plugins given to --reattach NAME=... .
func reattachedPlugins(flags []string) map[string]bool {
	out := map[string]bool{}
	for i, f := range flags {
		v, ok := strings.CutPrefix(f, "--reattach=")
		if !ok && f == "--reattach" && i+1 < len(flags) {
			v, ok = flags[i+1], true
		}
		if name, _, cut := strings.Cut(v, "="); ok && cut {
			out[name] = true
		}
	}
	return out
}

func hasFlag(flags []string, name string) bool {
	for _, f := range flags {
		if f == name || strings.HasPrefix(f, name+"=") {
			return true
		}
	}
	return false
}

// WaitHealthy polls /health and a proxied RPC until both answer.
func (e *Envd) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-e.done:
			return fmt.Errorf("envd-init exited: %v", e.err)
		default:
		}
		res, err := http.Get(e.URL + "/health")
		if err == nil {
			res.Body.Close()
			if res.StatusCode < 300 && e.pluginsUp() {
				return nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return errors.New("envd did not become healthy")
}

func (e *Envd) pluginsUp() bool {
	for _, name := range []string{"envd-proc", "envd-fs", "envd-net"} {
		if !e.reattached[name] && e.PluginPid(name) == 0 {
			return false
		}
	}
	// The plugins are up once they answer through the proxy.
	req, _ := http.NewRequest(http.MethodPost, e.URL+"/process.Process/List", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}

// Log returns what the tree logged so far.
func (e *Envd) Log() string { return e.log.String() }

// Pid is envd-init's pid.
func (e *Envd) Pid() int { return e.Cmd.Process.Pid }

// PluginPid returns the pid of the named plugin (a child of envd-init), or 0.
func (e *Envd) PluginPid(name string) int {
	for _, pid := range Children(e.Pid()) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == name {
			return pid
		}
	}
	return 0
}

// Children lists the child pids of pid.
func Children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// Stop sends SIGTERM and waits for envd-init to exit 0.
func (e *Envd) Stop() error {
	select {
	case <-e.done:
		return e.err
	default:
	}
	_ = e.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
		return e.err
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-e.Cmd.Process.Pid, syscall.SIGKILL)
		<-e.done
		return errors.New("envd-init did not exit within 15s of SIGTERM")
	}
}

// Done is closed when envd-init has exited.
func (e *Envd) Done() <-chan struct{} { return e.done }

// Protocol is one way to call envd.
type Protocol struct {
	Name    string
	Client  *http.Client
	Options []connect.ClientOption
}

// Protocols lists the four client protocols envd must serve.
func Protocols() []Protocol {
	h1 := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	h2t := &http.Transport{TLSClientConfig: &tls.Config{}}
	h2t.Protocols = new(http.Protocols)
	h2t.Protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: h2t}
	return []Protocol{
		{Name: "connect-json", Client: h1, Options: []connect.ClientOption{connect.WithProtoJSON()}},
		{Name: "connect-proto", Client: h1},
		{Name: "grpc-web", Client: h1, Options: []connect.ClientOption{connect.WithGRPCWeb()}},
		{Name: "grpc", Client: h2, Options: []connect.ClientOption{connect.WithGRPC()}},
	}
}

// BasicUser returns the Authorization header value selecting user.
func BasicUser(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

// EnsureUser creates the conventional sandbox user `user` (home /home/user)
// when it is missing; it needs root.
func EnsureUser() error {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "user:") {
			return nil
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("user `user` is missing and only root can create it")
	}
	out, err := exec.Command("useradd", "-m", "-s", "/bin/bash", "user").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "already exists") {
		return fmt.Errorf("useradd: %v: %s", err, out)
	}
	return nil
}

// Ctx returns a context bounded for one test step.
func Ctx(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

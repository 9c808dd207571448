package integration

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/internal/cgroups"
	"github.com/envd-project/envd/test/envdtest"
	"google.golang.org/protobuf/proto"
)

func postInit(t *testing.T, e *envdtest.Envd, body string, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.URL+"/init", strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("X-Access-Token", token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func sign(path, op, user, token string, exp int64) string {
	s := path + ":" + op + ":" + user + ":" + token
	if exp != 0 {
		s += fmt.Sprintf(":%d", exp)
	}
	sum := sha256.Sum256([]byte(s))
	return "v1_" + base64.RawStdEncoding.EncodeToString(sum[:])
}

func TestAuthMatrixThroughTree(t *testing.T) {
	e := envdtest.Start(t)
	const token = "abc123"
	if code := postInit(t, e, `{"accessToken":"`+token+`"}`, ""); code != http.StatusNoContent {
		t.Fatalf("/init: %d", code)
	}
	do := func(method, path, tok string, body io.Reader, hdr ...string) (int, string) {
		req, _ := http.NewRequest(method, e.URL+path, body)
		if tok != "" {
			req.Header.Set("X-Access-Token", tok)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	const unauthorized = `{"code":401,"message":"unauthorized access, please provide a valid access token or method signing if supported"}`
	for _, tc := range []struct{ method, path string }{
		{"POST", "/process.Process/List"}, {"POST", "/filesystem.Filesystem/Stat"},
		{"GET", "/metrics"}, {"GET", "/envs"}, {"POST", "/files/compose"},
		// Wrenn flavor: gated once a token is set (issue 12), or any
		// sandbox user could stop port forwarding.
		{"POST", "/snapshot/prepare"},
	} {
		for _, tok := range []string{"", "wrong"} {
			code, body := do(tc.method, tc.path, tok, strings.NewReader("{}"), "Content-Type", "application/json")
			if code != http.StatusUnauthorized || strings.TrimSpace(body) != unauthorized {
				t.Errorf("%s %s token %q: %d %s", tc.method, tc.path, tok, code, body)
			}
		}
	}
	if code, body := do("POST", "/process.Process/List", token, strings.NewReader("{}"), "Content-Type", "application/json"); code != http.StatusOK {
		t.Errorf("RPC with the token: %d %s", code, body)
	}
	if code, body := do("POST", "/snapshot/prepare", token, nil); code != http.StatusNoContent {
		t.Errorf("/snapshot/prepare with the token: %d %s", code, body)
	}
	// The next /init restores what prepare stopped.
	if code := postInit(t, e, `{"accessToken":"`+token+`"}`, token); code != http.StatusNoContent {
		t.Fatalf("/init after prepare: %d", code)
	}
	// gRPC callers need the token too.
	for _, p := range envdtest.Protocols() {
		cl := processconnect.NewProcessClient(p.Client, e.URL, p.Options...)
		req := connect.NewRequest(&procpb.ListRequest{})
		if _, err := cl.List(context.Background(), req); err == nil {
			t.Errorf("%s without token succeeded", p.Name)
		}
		req = connect.NewRequest(&procpb.ListRequest{})
		req.Header().Set("X-Access-Token", token)
		if _, err := cl.List(context.Background(), req); err != nil {
			t.Errorf("%s with token: %v", p.Name, err)
		}
	}
	if code, _ := do("GET", "/health", "", nil); code != http.StatusOK {
		t.Errorf("/health must stay open: %d", code)
	}

	path := "/etc/hostname"
	q := func(v url.Values) string { return "/files?" + v.Encode() }
	now := time.Now().Unix()
	cases := []struct {
		name string
		v    url.Values
		tok  string
		want int
	}{
		{"no token, no signature", url.Values{"path": {path}}, "", 401},
		{"header token", url.Values{"path": {path}}, token, 200},
		{"wrong header token", url.Values{"path": {path}}, "nope", 401},
		{"valid signature", url.Values{"path": {path}, "signature": {sign(path, "read", "", token, 0)}}, "", 200},
		{"valid signature with expiration", url.Values{"path": {path}, "signature": {sign(path, "read", "", token, now+60)}, "signature_expiration": {fmt.Sprint(now + 60)}}, "", 200},
		{"wrong signature", url.Values{"path": {path}, "signature": {sign(path, "write", "", token, 0)}}, "", 401},
		{"expired signature", url.Values{"path": {path}, "signature": {sign(path, "read", "", token, now-10)}, "signature_expiration": {fmt.Sprint(now - 10)}}, "", 401},
		{"malformed expiration", url.Values{"path": {path}, "signature": {sign(path, "read", "", token, 0)}, "signature_expiration": {"soon"}}, "", 400},
	}
	for _, c := range cases {
		if code, body := do("GET", q(c.v), c.tok, nil); code != c.want {
			t.Errorf("/files %s: %d %s", c.name, code, body)
		}
	}
}

func TestInitEnvVarsReachProcesses(t *testing.T) {
	e := envdtest.Start(t)
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	ctx := envdtest.Ctx(t, 30*time.Second)
	now := time.Now().UTC()
	body := fmt.Sprintf(`{"envVars":{"GREETING":"hi"},"timestamp":%q}`, now.Format(time.RFC3339Nano))
	if code := postInit(t, e, body, ""); code != http.StatusNoContent {
		t.Fatalf("/init: %d", code)
	}
	// An older timestamp is a replay: ignored, still 204.
	old := fmt.Sprintf(`{"envVars":{"GREETING":"stale"},"timestamp":%q}`, now.Add(-time.Minute).Format(time.RFC3339Nano))
	if code := postInit(t, e, old, ""); code != http.StatusNoContent {
		t.Fatalf("stale /init: %d", code)
	}
	echo := func() string {
		c, err := startAll(t, ctx, cl, &procpb.StartRequest{Process: sh(`echo "$GREETING $WRENN_SANDBOX"`)}, "")
		if err != nil {
			t.Fatal(err)
		}
		return c.stdout.String()
	}
	if got := echo(); got != "hi false\n" {
		t.Fatalf("env after /init: %q", got)
	}
	old = e.Log()
	pid := e.PluginPid("envd-proc")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for e.PluginPid("envd-proc") == pid || e.PluginPid("envd-proc") == 0 {
		if ctx.Err() != nil {
			t.Fatal("envd-proc not restarted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := echo(); got != "hi false\n" {
		t.Fatalf("env after an envd-proc restart: %q", got)
	}
}

func TestSnapshotPrepareAndRecovery(t *testing.T) {
	e := envdtest.Start(t)
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	ctx := envdtest.Ctx(t, 30*time.Second)
	tag := "before-snapshot"
	s, err := cl.Start(ctx, connect.NewRequest(&procpb.StartRequest{
		Process: sh("cat; echo done"), Tag: &tag, Stdin: proto.Bool(true),
	}))
	if err != nil {
		t.Fatal(err)
	}
	s.Receive()
	s.Close()
	res, err := http.Post(e.URL+"/snapshot/prepare", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNoContent {
		t.Fatalf("/snapshot/prepare: %d", res.StatusCode)
	}
	for i := 0; i < 3; i++ {
		res, err := http.Get(e.URL + "/health")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	if n := strings.Count(e.Log(), "post-restore recovery done"); n != 1 {
		t.Errorf("recovery ran %d times", n)
	}
	sel := &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: tag}}
	conn, err := cl.Connect(ctx, connect.NewRequest(&procpb.ConnectRequest{Process: sel}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if !conn.Receive() {
		t.Fatalf("connect after restore: %v", conn.Err())
	}
	if _, err := cl.CloseStdin(ctx, connect.NewRequest(&procpb.CloseStdinRequest{Process: sel})); err != nil {
		t.Fatal(err)
	}
	var c collected
	for conn.Receive() {
		c.add(conn.Msg().GetEvent())
	}
	if c.stdout.String() != "done\n" || c.end.GetExitCode() != 0 {
		t.Fatalf("process across the snapshot: %q %v (%v)", c.stdout.String(), c.end, conn.Err())
	}
}

// cgroup2Base finds a cgroup2 hierarchy to make a test root in.
func cgroup2Base() string {
	for _, base := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if ok, _ := cgroups.IsCgroup2(base); ok {
			return base
		}
	}
	return ""
}

func TestCgroupPlacement(t *testing.T) {
	base := cgroup2Base()
	if base == "" || os.Geteuid() != 0 {
		t.Skip("no writable cgroup2 hierarchy here (needs root and cgroup2)")
	}
	root := filepath.Join(base, fmt.Sprintf("envd-it-%d", os.Getpid()))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Skipf("cannot create a cgroup under %s: %v", base, err)
	}
	t.Cleanup(func() {
		for _, g := range []string{"ptys", "user", "socats"} {
			_ = os.Remove(filepath.Join(root, g))
		}
		_ = os.Remove(root)
	})
	e := envdtest.Start(t, "--cgroup-root", root)
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	ctx := envdtest.Ctx(t, 20*time.Second)
	rel := strings.TrimPrefix(root, base)
	check := func(req *procpb.StartRequest, group string) {
		t.Helper()
		c, err := startAll(t, ctx, cl, req, "")
		if err != nil {
			t.Fatal(err)
		}
		out := c.stdout.String() + c.pty.String()
		if want := "0::" + rel + "/" + group; !strings.Contains(out, want) {
			t.Errorf("%s process: /proc/self/cgroup %q, want %q", group, out, want)
		}
	}
	check(&procpb.StartRequest{Process: sh("cat /proc/self/cgroup")}, "user")
	check(&procpb.StartRequest{Process: sh("cat /proc/self/cgroup"), Pty: &procpb.PTY{Size: &procpb.PTY_Size{Cols: 80, Rows: 24}}}, "ptys")
	// envd-net relays user traffic and is charged like the reference's socat.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", e.PluginPid("envd-net")))
	if err != nil || !strings.Contains(string(b), "0::"+rel+"/socats") {
		t.Errorf("envd-net cgroup %q %v", b, err)
	}
}

package filesystem

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"

	controlpb "github.com/envd-project/envd/gen/control"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
)

func newDB() *users.DB { return &users.DB{PasswdPath: "/etc/passwd", GroupPath: "/etc/group"} }

func newSvc(t testing.TB, workdir string) *Service {
	t.Helper()
	defs := defaults.NewStore(&controlpb.Config{DefaultUser: "root", DefaultWorkdir: workdir})
	s := New(zap.NewNop(), defs, newDB())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

func asUser(name string) context.Context {
	return callinfo.With(context.Background(), callinfo.Info{User: name})
}

func codeOf(err error) connect.Code {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code()
	}
	return 0
}

func wantCode(t testing.TB, err error, code connect.Code, msgPart string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", code)
	}
	if c := codeOf(err); c != code {
		t.Fatalf("code %v (%v), want %v", c, err, code)
	}
	if msgPart != "" && !strings.Contains(err.Error(), msgPart) {
		t.Fatalf("error %q does not contain %q", err, msgPart)
	}
}

// testUser makes sure the non-root user "user" exists (useradd -m), or
// skips when that is impossible.
func testUser(t testing.TB) *users.User {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: ownership tests need root (to chown and to create user 'user')")
	}
	db := newDB()
	if u, err := db.Lookup("user"); err == nil {
		return u
	}
	if out, err := exec.Command("useradd", "-m", "-d", "/home/user", "user").CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create user 'user': %v: %s", err, out)
	}
	time.Sleep(600 * time.Millisecond) // the DB re-stats passwd at most every 500 ms
	u, err := newDB().Lookup("user")
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func fdCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// settle waits until the goroutine count drops to at most n (goroutines
// take a moment to exit after the call that stopped them returns).
func settle(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines: %d, want <= %d\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

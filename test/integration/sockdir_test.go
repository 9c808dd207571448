package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/envd-project/envd/test/envdtest"
)

// socketDirOf returns the directory go-plugin gave a plugin for its
// sockets, and the <name>-http-* directory the plugin made in it.
func socketDirOf(t *testing.T, ctx context.Context, pid int, name string) (string, string) {
	t.Helper()
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	var dir string
	for _, kv := range strings.Split(string(env), "\x00") {
		if v, ok := strings.CutPrefix(kv, "PLUGIN_UNIX_SOCKET_DIR="); ok {
			dir = v
		}
	}
	if dir == "" {
		t.Fatalf("%s has no socket directory", name)
	}
	// It makes it once it has started.
	for {
		https, _ := filepath.Glob(filepath.Join(dir, name+"-http-*", "http.sock"))
		if len(https) == 1 {
			return dir, filepath.Dir(https[0])
		}
		if len(https) > 1 || ctx.Err() != nil {
			t.Fatalf("%s: %d http sockets in %s", name, len(https), dir)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A plugin that ends by SIGTERM (which exits without its deferred
// cleanups) or a crash leaves no socket directory behind: one would pile
// up per restart.
func TestPluginSocketDirsGoWithThePlugin(t *testing.T) {
	e := envdtest.Start(t)
	ctx := envdtest.Ctx(t, 60*time.Second)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		old := 0
		for old == 0 {
			if old = e.PluginPid("envd-fs"); old == 0 {
				if ctx.Err() != nil {
					t.Fatal("no envd-fs")
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		dir, httpDir := socketDirOf(t, ctx, old, "envd-fs")
		if err := syscall.Kill(old, sig); err != nil {
			t.Fatal(err)
		}
		for e.PluginPid("envd-fs") == old || e.PluginPid("envd-fs") == 0 {
			if ctx.Err() != nil {
				t.Fatalf("envd-fs was not restarted after %v", sig)
			}
			time.Sleep(5 * time.Millisecond)
		}
		// The old instance is closed before its replacement starts.
		for _, p := range []string{httpDir, dir} {
			if _, err := os.Lstat(p); !os.IsNotExist(err) {
				t.Errorf("after %v: %s is still there (%v)", sig, p, err)
			}
		}
	}
}

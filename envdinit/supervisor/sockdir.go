package supervisor

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Socket directories: go-plugin makes a plugin-dir* per start in
// Options.SocketDir, where the plugin puts its gRPC socket and its
// <name>-http-* directory (HTTP and handoff sockets); a plugin started by
// hand (--debug-server) puts its plugin* socket and <name>-http-*
// directory in SocketDir itself. A plugin removes its own only when it
// returns normally, and go-plugin removes a plugin-dir only when envd-init
// kills the client: a SIGKILLed envd-init (outside a VM) or hand-started
// plugin leaves them behind, one set per run.

// staleAge is how old an entry must be before it may be stale: a plugin
// being started has made its directory but not yet its sockets (the start
// timeout bounds that), and several envd-inits may share the directory on
// a development host.
const staleAge = 2 * time.Minute

// ownEntry reports whether name is one envd or go-plugin makes.
func ownEntry(name string) bool {
	return strings.HasPrefix(name, "plugin") || strings.Contains(name, "-http-")
}

// removeStale removes what dead plugins left in dir: entries made by envd
// or go-plugin, older than staleAge, with no socket a live process still
// listens on.
func removeStale(log *zap.Logger, dir string, now time.Time) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	removed := 0
	for _, e := range ents {
		if !ownEntry(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil || now.Sub(fi.ModTime()) < staleAge {
			continue
		}
		if live(p, fi, 2) {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			log.Warn("stale plugin socket directory not removed", zap.String("path", p), zap.Error(err))
			continue
		}
		removed++
	}
	if removed > 0 {
		log.Info("removed stale plugin sockets", zap.String("dir", dir), zap.Int("entries", removed))
	}
}

// live reports whether p is, or holds (depth levels down), a socket that
// a process listens on. Anything but a refusal counts as live: a plugin
// that is stopped or busy keeps its sockets.
func live(p string, fi os.FileInfo, depth int) bool {
	switch {
	case fi.Mode()&os.ModeSocket != 0:
		c, err := net.DialTimeout("unix", p, time.Second)
		if err == nil {
			c.Close()
			return true
		}
		return !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT)
	case fi.IsDir() && depth > 0:
		ents, err := os.ReadDir(p)
		if err != nil {
			return true
		}
		for _, e := range ents {
			q := filepath.Join(p, e.Name())
			if qi, err := os.Lstat(q); err == nil && live(q, qi, depth-1) {
				return true
			}
		}
	}
	return false
}

// removeSocketDir removes the directory of a dead instance's HTTP socket
// (go-plugin's Kill removes the plugin-dir holding it; this does not rely
// on that), if it lies in dir.
func removeSocketDir(log *zap.Logger, dir, httpSocket string) {
	if dir == "" || httpSocket == "" {
		return
	}
	d := filepath.Dir(httpSocket)
	if rel, err := filepath.Rel(dir, d); err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return
	}
	if err := os.RemoveAll(d); err != nil {
		log.Warn("plugin socket directory not removed", zap.String("path", d), zap.Error(err))
	}
}

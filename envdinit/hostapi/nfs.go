package hostapi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/envd-project/envd/envdinit/reaper"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// nfsOptions are E2B's mount options (§9.9): the volume proxy speaks NFSv3
// over TCP on 2049 only; no attribute cache so pause/resume stays coherent.
const nfsOptions = "fg,hard,sync,rsize=1048576,wsize=1048576,mountproto=tcp,mountport=2049," +
	"proto=tcp,port=2049,nfsvers=3,noacl,noac,lookupcache=none"

// nfsMounter mounts /init's volumeMounts, remembering which lifecycle each
// path was mounted for so a repeated /init does not remount.
type nfsMounter struct {
	log     *zap.Logger
	run     reaper.RunFunc
	mu      sync.Mutex
	mounted map[string]string // path → lifecycle ID
}

// setup mounts every volume in parallel; ctx carries the total budget.
func (n *nfsMounter) setup(ctx context.Context, lifecycle string, mounts []volumeMount) error {
	for _, m := range mounts {
		if m.NFSTarget == "" || strings.HasPrefix(m.NFSTarget, "-") {
			return fmt.Errorf("invalid nfs_target %q", m.NFSTarget)
		}
		if !filepath.IsAbs(m.Path) {
			return fmt.Errorf("invalid volume path %q: must be absolute", m.Path)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(mounts))
	for i, m := range mounts {
		path := filepath.Clean(m.Path)
		n.mu.Lock()
		prev, ok := n.mounted[path]
		n.mu.Unlock()
		if ok && prev == lifecycle {
			n.log.Debug("nfs: already mounted for this lifecycle", zap.String("path", path))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.mountOne(ctx, m.NFSTarget, path); err != nil {
				errs[i] = fmt.Errorf("mount %s at %q: %w", m.NFSTarget, path, err)
				return
			}
			n.mu.Lock()
			n.mounted[path] = lifecycle
			n.mu.Unlock()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (n *nfsMounter) mountOne(ctx context.Context, target, path string) error {
	mounted, err := isMountPoint(path)
	if err != nil {
		return err
	}
	if mounted {
		n.log.Info("nfs: unmounting a stale mount", zap.String("path", path))
		if out, err := n.run(ctx, "umount", "--force", "--", path); err != nil {
			n.log.Warn("nfs: forced umount failed, detaching lazily", zap.Error(err), zap.ByteString("output", out))
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if out, err := n.run(lctx, "umount", "--lazy", "--", path); err != nil {
				return fmt.Errorf("umount stale mount: %w: %s", err, bytes.TrimSpace(out))
			}
		}
		n.mu.Lock()
		delete(n.mounted, path)
		n.mu.Unlock()
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return fmt.Errorf("create mount point: %w", err)
	}
	if out, err := n.run(ctx, "mount", "-v", "-t", "nfs", "-o", nfsOptions, "--", target, path); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return fmt.Errorf("mount: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// isMountPoint reports whether path is a mount point of this namespace.
func isMountPoint(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMount(fields[4]) == path {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	return false, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, ok := octal(s[i+1 : i+4]); ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func octal(s string) (byte, bool) {
	if len(s) != 3 {
		return 0, false
	}
	var v int
	for _, c := range s {
		if c < '0' || c > '7' {
			return 0, false
		}
		v = v*8 + int(c-'0')
	}
	if v > 255 {
		return 0, false
	}
	return byte(v), true
}

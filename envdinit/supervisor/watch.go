package supervisor

import (
	"os"
	"path/filepath"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Hot-swap: envd-init watches the directories of its plugin executables
// (inotify). When a plugin's file is replaced (make swap-envd-proc renames
// a fresh build over it; make build re-links all three) and, after a short
// settling time, names another file than the one running, that plugin is
// handed over to a new process started from the new file (see swap).

// swapSettle lets a burst of events (write, chmod, rename) settle before
// the file is looked at.
const swapSettle = 100 * time.Millisecond

// fileID identifies the file a plugin was started from.
type fileID struct {
	dev, ino uint64
	mtime    int64
	size     int64
}

func statID(path string) (fileID, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, false
	}
	return fileID{dev: st.Dev, ino: st.Ino, mtime: st.Mtim.Nano(), size: st.Size}, true
}

// watchFiles runs until Stop, asking a plugin to swap when its file changes.
func (s *Supervisor) watchFiles() {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		s.log.Warn("plugin files are not watched: no hot-swap", zap.Error(err))
		return
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: reads park in the netpoller
	byName := map[string]*managed{}
	dirs := map[string]bool{}
	for _, m := range s.plugins {
		if m.spec.Reattach != "" {
			continue // started by hand: its file is not what runs
		}
		dir := filepath.Dir(m.spec.Path)
		byName[filepath.Base(m.spec.Path)] = m
		if dirs[dir] {
			continue
		}
		dirs[dir] = true
		const mask = unix.IN_MOVED_TO | unix.IN_CREATE | unix.IN_CLOSE_WRITE | unix.IN_ATTRIB
		if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
			s.log.Warn("plugin directory is not watched: no hot-swap", zap.String("dir", dir), zap.Error(err))
		}
	}
	go func() {
		<-s.stopped
		f.Close()
	}()
	buf := make([]byte, 16<<10)
	timers := map[*managed]*time.Timer{}
	for {
		n, err := f.Read(buf)
		if err != nil {
			if err != syscall.EINTR {
				return
			}
			continue
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			name := string(nameBytes)
			for i := 0; i < len(name); i++ {
				if name[i] == 0 {
					name = name[:i]
					break
				}
			}
			m := byName[name]
			if m == nil {
				continue
			}
			if t := timers[m]; t != nil {
				t.Reset(swapSettle)
				continue
			}
			timers[m] = time.AfterFunc(swapSettle, func() { s.fileChanged(m) })
		}
	}
}

// fileChanged asks for a swap if m's file is not the one running.
func (s *Supervisor) fileChanged(m *managed) {
	id, ok := statID(m.spec.Path)
	if !ok {
		return // mid-replacement; the rename that completes it comes next
	}
	m.mu.Lock()
	same := id == m.fileID
	m.mu.Unlock()
	if same {
		return
	}
	m.log.Info("plugin file replaced: swapping", zap.String("path", m.spec.Path))
	select {
	case m.swapReq <- time.Now():
	default:
	}
}

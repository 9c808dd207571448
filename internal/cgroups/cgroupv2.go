package cgroups

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// DefaultRoot is where a VM's init mounts cgroup2 (--cgroup-root default).
const DefaultRoot = "/sys/fs/cgroup"

// Group directory names. They are the same in both flavors (WIRE.md §13
// allows either layout; Wrenn-Go used these too).
var groupNames = map[Kind]string{
	PTY:       "ptys",
	User:      "user",
	Forwarder: "socats",
}

// GroupName returns the directory name of kind's group ("" for System).
func GroupName(kind Kind) string { return groupNames[kind] }

const mib = 1 << 20

type property struct{ file, value string }

// properties returns the per-group settings of WIRE.md §9.5 (E2B's, the
// superset). memLimit is M = MemTotal − min(MemTotal/8, 128 MiB); 0 leaves
// memory limits out.
func properties(kind Kind, memLimit uint64) []property {
	var p []property
	lim := strconv.FormatUint(memLimit, 10)
	switch kind {
	case PTY:
		p = []property{{"cpu.weight", "200"}, {"io.weight", "default 50"}}
		if memLimit > 0 {
			p = append(p, property{"memory.high", lim}, property{"memory.max", lim})
		}
	case User:
		p = []property{{"cpu.weight", "50"}, {"io.weight", "default 10"}}
		if memLimit > 0 {
			p = append(p, property{"memory.high", lim}, property{"memory.max", lim})
		}
	case Forwarder:
		p = []property{
			{"cpu.weight", "150"}, {"io.weight", "default 50"},
			{"memory.min", strconv.Itoa(5 * mib)}, {"memory.low", strconv.Itoa(8 * mib)},
		}
	}
	return p
}

// V2 is the cgroup v2 manager: one open directory fd per group, used as
// SysProcAttr.CgroupFD so children start inside their group (clone3
// CLONE_INTO_CGROUP) with no window in envd's own cgroup.
type V2 struct {
	root  string
	mu    sync.RWMutex // Close may race with spawns
	fds   map[Kind]int
	paths map[Kind]string
}

var _ Manager = (*V2)(nil)

// IsCgroup2 reports whether dir is the root or a directory of a cgroup2 mount.
func IsCgroup2(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
}

// New creates (or reuses) the groups under root, writes their properties
// and opens them. Property files that do not exist or may not be written
// (controller not enabled in root's cgroup.subtree_control) are skipped.
func New(root string, log *zap.Logger) (Manager, error) {
	return newV2(root, log, true)
}

// Open opens groups that New already created, without writing anything
// (for plugins: envd-init owns the layout).
func Open(root string, log *zap.Logger) (Manager, error) {
	return newV2(root, log, false)
}

// Setup is New with the fallback of §9.5: disabled, no cgroup2 or any
// setup error gives Noop and a logged reason, never a failure.
func Setup(root string, enabled bool, log *zap.Logger) Manager {
	if !enabled {
		log.Info("cgroups disabled, processes stay in envd's cgroup")
		return Noop{}
	}
	m, err := New(root, log)
	if err != nil {
		log.Warn("cgroups unavailable, processes stay in envd's cgroup", zap.String("root", root), zap.Error(err))
		return Noop{}
	}
	return m
}

func newV2(root string, log *zap.Logger, create bool) (*V2, error) {
	if log == nil {
		log = zap.NewNop()
	}
	ok, err := IsCgroup2(root)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s is not a cgroup2 mount", root)
	}
	if create {
		enableControllers(root, log)
	}
	memLimit := uint64(0)
	if create {
		if total, err := memTotal(); err != nil {
			log.Warn("cgroups: no memory limits", zap.Error(err))
		} else {
			memLimit = total - min(total/8, 128*mib)
		}
	}
	m := &V2{root: root, fds: map[Kind]int{}, paths: map[Kind]string{}}
	for _, kind := range []Kind{PTY, User, Forwarder} {
		dir := filepath.Join(root, groupNames[kind])
		if create {
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				m.Close()
				return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
			}
			for _, p := range properties(kind, memLimit) {
				if err := writeProperty(dir, p); err != nil {
					if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
						log.Debug("cgroups: property skipped (controller not enabled)",
							zap.String("group", dir), zap.String("file", p.file), zap.Error(err))
						continue
					}
					m.Close()
					return nil, err
				}
			}
		}
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("open cgroup %s: %w", dir, err)
		}
		m.fds[kind] = fd
		m.paths[kind] = dir
	}
	log.Info("cgroups ready", zap.String("root", root))
	return m, nil
}

// enableControllers turns on cpu, memory and io for root's children where
// root offers them, one by one so that a missing one does not block the rest.
func enableControllers(root string, log *zap.Logger) {
	avail, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		log.Debug("cgroups: cannot read controllers", zap.Error(err))
		return
	}
	have := strings.Fields(string(avail))
	for _, c := range []string{"cpu", "memory", "io"} {
		if !containsString(have, c) {
			log.Debug("cgroups: controller not available", zap.String("controller", c))
			continue
		}
		if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+"+c), 0); err != nil {
			log.Debug("cgroups: cannot enable controller", zap.String("controller", c), zap.Error(err))
		}
	}
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func writeProperty(dir string, p property) error {
	// O_TRUNC is not accepted by every cgroup file; a plain write is what
	// the kernel expects.
	f, err := os.OpenFile(filepath.Join(dir, p.file), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s/%s: %w", dir, p.file, err)
	}
	_, werr := f.WriteString(p.value)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("write %q to %s/%s: %w", p.value, dir, p.file, werr)
	}
	if cerr != nil {
		return fmt.Errorf("write %q to %s/%s: %w", p.value, dir, p.file, cerr)
	}
	return nil
}

func memTotal() (uint64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("read meminfo: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse MemTotal: %w", err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("MemTotal missing from /proc/meminfo")
}

// FD implements Manager.
func (m *V2) FD(kind Kind) (int, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	fd, ok := m.fds[kind]
	return fd, ok
}

// Path returns the directory of kind's group ("" for System).
func (m *V2) Path(kind Kind) string { return m.paths[kind] }

// Root returns the cgroup root the groups live under.
func (m *V2) Root() string { return m.root }

// Close implements Manager: it closes the directory fds (the groups stay).
func (m *V2) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for kind, fd := range m.fds {
		if err := unix.Close(fd); err != nil {
			errs = append(errs, fmt.Errorf("close cgroup fd of %s: %w", groupNames[kind], err))
		}
		delete(m.fds, kind)
	}
	return errors.Join(errs...)
}

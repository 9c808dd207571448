// Package users reads /etc/passwd and /etc/group directly (no NSS), the way
// the reference envd's pure-Go os/user does, and caches both files until they
// change so that hot paths (ListDir owner names, every Start) pay no parse.
// It runs in envd-init (Basic user checks), envd-proc and envd-fs.
package users

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrUnknownUser is wrapped by Lookup when the name is not in passwd.
var ErrUnknownUser = errors.New("unknown user")

// User is one passwd entry with its supplementary groups.
type User struct {
	Name   string
	UID    uint32
	GID    uint32
	Home   string
	Shell  string
	Groups []uint32 // supplementary groups from /etc/group, primary included
}

// DB is a cached view of the passwd and group files.
type DB struct {
	PasswdPath string
	GroupPath  string

	mu      sync.Mutex
	stamp   [2]fileStamp
	byName  map[string]*User
	uidName map[uint32]string
	gidName map[uint32]string
	checked time.Time
}

type fileStamp struct {
	mtime time.Time
	size  int64
	ino   uint64
}

// Default is the system database.
var Default = &DB{PasswdPath: "/etc/passwd", GroupPath: "/etc/group"}

// recheck bounds how often name lookups by id stat the files: a burst
// (a ListDir of 10,000 entries) costs one stat, not 10,000. Lookup by name
// always stats them: a user added by `useradd` must be usable by the very
// next call, and that call costs far more than two stats.
const recheck = 500 * time.Millisecond

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	st := fileStamp{mtime: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(interface{ Ino() uint64 }); ok {
		st.ino = sys.Ino()
	}
	return st
}

func (db *DB) refresh() error { return db.reload(false) }

// reload re-reads the files if they changed; unless force, at most once
// per recheck.
func (db *DB) reload(force bool) error {
	now := time.Now()
	if !force && db.byName != nil && now.Sub(db.checked) < recheck {
		return nil
	}
	db.checked = now
	st := [2]fileStamp{stampOf(db.PasswdPath), stampOf(db.GroupPath)}
	if db.byName != nil && st == db.stamp {
		return nil
	}
	passwd, err := os.ReadFile(db.PasswdPath)
	if err != nil {
		return fmt.Errorf("read %s: %w", db.PasswdPath, err)
	}
	group, err := os.ReadFile(db.GroupPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read %s: %w", db.GroupPath, err)
	}
	byName, uidName := ParsePasswd(passwd)
	gidName, members := ParseGroup(group)
	for _, u := range byName {
		u.Groups = append(u.Groups, u.GID)
		for _, gid := range members[u.Name] {
			if gid != u.GID {
				u.Groups = append(u.Groups, gid)
			}
		}
	}
	db.byName, db.uidName, db.gidName, db.stamp = byName, uidName, gidName, st
	return nil
}

// Lookup returns the named user. An unknown name wraps ErrUnknownUser.
func (db *DB) Lookup(name string) (*User, error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if err := db.reload(true); err != nil {
		return nil, err
	}
	u, ok := db.byName[name]
	if !ok {
		return nil, fmt.Errorf("user: %w %s", ErrUnknownUser, name)
	}
	cp := *u
	cp.Groups = append([]uint32(nil), u.Groups...)
	return &cp, nil
}

// UserName returns the name for uid, or the number as a string.
func (db *DB) UserName(uid uint32) string {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.refresh() == nil {
		if n, ok := db.uidName[uid]; ok {
			return n
		}
	}
	return strconv.FormatUint(uint64(uid), 10)
}

// GroupName returns the name for gid, or the number as a string.
func (db *DB) GroupName(gid uint32) string {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.refresh() == nil {
		if n, ok := db.gidName[gid]; ok {
			return n
		}
	}
	return strconv.FormatUint(uint64(gid), 10)
}

// records calls fn with the colon-separated fields of every line of a
// passwd(5)/group(5) style file that has at least n fields and a name;
// comments, NIS markers and blank lines are skipped.
func records(data []byte, n int, fn func(f []string)) {
	// The whole file is in memory already: lines of any length (a group
	// with thousands of members) are split off it, not scanned with a cap.
	for raw := range strings.Lines(string(data)) {
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		if f := strings.Split(line, ":"); len(f) >= n && f[0] != "" {
			fn(f)
		}
	}
}

// ParsePasswd parses passwd(5) text. Malformed lines are skipped; the first
// entry of a name or uid wins, as getpwnam does.
func ParsePasswd(data []byte) (map[string]*User, map[uint32]string) {
	byName := map[string]*User{}
	uidName := map[uint32]string{}
	records(data, 7, func(f []string) {
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return
		}
		if _, dup := byName[f[0]]; !dup {
			byName[f[0]] = &User{Name: f[0], UID: uint32(uid), GID: uint32(gid), Home: f[5], Shell: f[6]}
		}
		if _, dup := uidName[uint32(uid)]; !dup {
			uidName[uint32(uid)] = f[0]
		}
	})
	return byName, uidName
}

// ParseGroup parses group(5) text into gid→name and member→gids.
func ParseGroup(data []byte) (map[uint32]string, map[string][]uint32) {
	gidName := map[uint32]string{}
	members := map[string][]uint32{}
	records(data, 4, func(f []string) {
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			return
		}
		if _, dup := gidName[uint32(gid)]; !dup {
			gidName[uint32(gid)] = f[0]
		}
		if f[3] == "" {
			return
		}
		for _, m := range strings.Split(f[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				members[m] = append(members[m], uint32(gid))
			}
		}
	})
	return gidName, members
}

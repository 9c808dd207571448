package users

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const passwd = `root:x:0:0:root:/root:/bin/bash
# comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
user:x:1000:1000::/srv/home-of-user:/bin/bash
broken:line
user:x:2000:2000::/dup:/bin/sh
bad:x:notanumber:1::/:/bin/sh
`

const group = `root:x:0:
daemon:x:1:
user:x:1000:
docker:x:999:user,other
audio:x:29: user
`

func writeDB(t *testing.T) *DB {
	t.Helper()
	dir := t.TempDir()
	p, g := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(p, []byte(passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(g, []byte(group), 0o644); err != nil {
		t.Fatal(err)
	}
	return &DB{PasswdPath: p, GroupPath: g}
}

func TestLookup(t *testing.T) {
	db := writeDB(t)
	u, err := db.Lookup("user")
	if err != nil {
		t.Fatal(err)
	}
	// The home comes from passwd, never /home/<name>; the first entry wins.
	if u.UID != 1000 || u.GID != 1000 || u.Home != "/srv/home-of-user" {
		t.Fatalf("user = %+v", u)
	}
	if !slices.Equal(u.Groups, []uint32{1000, 999, 29}) {
		t.Fatalf("groups = %v", u.Groups)
	}
	r, err := db.Lookup("root")
	if err != nil || r.Home != "/root" {
		t.Fatalf("root = %+v, %v", r, err)
	}
	if _, err := db.Lookup("nobody-here"); err == nil {
		t.Fatal("unknown user found")
	}
	if _, err := db.Lookup("bad"); err == nil {
		t.Fatal("malformed entry accepted")
	}
	if n := db.UserName(1000); n != "user" {
		t.Fatalf("UserName(1000) = %q", n)
	}
	if n := db.UserName(4242); n != "4242" {
		t.Fatalf("UserName(4242) = %q", n)
	}
	if n := db.GroupName(999); n != "docker" {
		t.Fatalf("GroupName(999) = %q", n)
	}
}

func TestLookupSeesChanges(t *testing.T) {
	db := writeDB(t)
	if _, err := db.Lookup("newbie"); err == nil {
		t.Fatal("newbie exists too early")
	}
	f, err := os.OpenFile(db.PasswdPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString("newbie:x:3000:3000::/home/newbie:/bin/sh\n")
	f.Close()
	// At once: `useradd` and the next command come back to back.
	if _, err := db.Lookup("newbie"); err != nil {
		t.Fatalf("new user not seen: %v", err)
	}
}

func TestMissingFiles(t *testing.T) {
	db := &DB{PasswdPath: "/nonexistent/passwd", GroupPath: "/nonexistent/group"}
	if _, err := db.Lookup("root"); err == nil {
		t.Fatal("lookup without passwd succeeded")
	}
	if n := db.UserName(0); n != "0" {
		t.Fatalf("UserName without passwd = %q", n)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(passwd), []byte(group))
	f.Add([]byte("::::::\n:x:1:1::/:\n"), []byte(":::,,,\n"))
	f.Fuzz(func(t *testing.T, p, g []byte) {
		byName, uidName := ParsePasswd(p)
		for name, u := range byName {
			if name == "" || u.Name != name {
				t.Fatalf("bad entry %q %+v", name, u)
			}
		}
		for uid, name := range uidName {
			if _, ok := byName[name]; !ok && name != "" {
				// A uid maps to the first name with that uid, which is in byName.
				t.Fatalf("uid %d names %q, not a user", uid, name)
			}
		}
		ParseGroup(g)
	})
}

// A line longer than any scanner buffer (a group of many members) is
// parsed, and so is everything after it.
func TestHugeLines(t *testing.T) {
	members := strings.Repeat("someone,", 200000) + "user"
	gids, byMember := ParseGroup([]byte("big:x:500:" + members + "\ndocker:x:999:user\n"))
	if gids[500] != "big" || gids[999] != "docker" || !slices.Contains(byMember["user"], 999) || !slices.Contains(byMember["user"], 500) {
		t.Fatalf("groups after a %d-byte line: %v, user in %v", len(members), gids, byMember["user"])
	}
	byName, _ := ParsePasswd([]byte("long:x:1:1:" + strings.Repeat("g", 2<<20) + ":/h:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"))
	if byName["user"] == nil || byName["user"].Home != "/home/user" {
		t.Fatalf("user after a long GECOS: %+v", byName["user"])
	}
}

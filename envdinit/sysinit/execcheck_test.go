package sysinit

import (
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The init of the real root is checked inside that root before the
// initramfs is freed. Each broken case here passed the check it replaced
// (os.Stat of the path), and its exec would have failed after the point
// of no return.
func TestCheckExecutable(t *testing.T) {
	root := t.TempDir()
	put := func(rel string, data []byte, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, rel string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(root, rel)); err != nil {
			t.Fatal(err)
		}
	}
	// A dynamic executable of the test machine; its loader is not in root.
	self, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Skip(err)
	}
	// A static ELF for this machine, as far as the check reads one.
	static := minimalELF(machines[runtime.GOARCH])
	put("usr/local/bin/envd-init", static, 0o755)
	put("sbin/dir/.keep", nil, 0o644)
	put("usr/bin/noexec", static, 0o644)
	put("usr/bin/dynamic", self, 0o755) // /bin/sh's loader is not in root
	put("usr/bin/script-ok", []byte("#!/usr/local/bin/envd-init -x\n"), 0o755)
	put("usr/bin/script-bad", []byte("#!/bin/bash\necho\n"), 0o755)
	put("usr/bin/text", []byte("hello\n"), 0o755)
	foreign := elf.EM_AARCH64
	if runtime.GOARCH == "arm64" {
		foreign = elf.EM_X86_64
	}
	put("usr/bin/foreign", minimalELF(foreign), 0o755)
	// An absolute symlink resolves in the new root, as after the chroot:
	// /usr/local/bin/envd-init here, the test machine's path outside.
	link("/usr/local/bin/envd-init", "init")
	link("/bin/sh", "sh-outside") // /bin/sh of the initramfs, not of root

	for _, tc := range []struct {
		path string
		want string // "" for usable
	}{
		{"/usr/local/bin/envd-init", ""},
		{"/init", ""},
		{"/usr/bin/script-ok", ""},
		{"/missing", "no such file"},
		{"/sbin/dir", "not a regular file"},
		{"/usr/bin/noexec", "not executable"},
		{"/usr/bin/dynamic", "needs /"},
		{"/usr/bin/script-bad", "run by /bin/bash"},
		{"/usr/bin/text", "neither an ELF"},
		{"/usr/bin/foreign", "built for"},
		{"/sh-outside", "no such file"},
	} {
		if tc.want != "" && tc.path != "/missing" {
			if _, err := os.Stat(filepath.Join(root, tc.path)); err != nil {
				t.Fatalf("%s: the old check (os.Stat) refused it too: %v", tc.path, err)
			}
		}
		err := checkExecutable(root, tc.path)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.path, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error saying %q", tc.path, err, tc.want)
		}
	}
}

// minimalELF is a 64-bit little-endian ELF header of an executable for m
// with no program headers (a static binary, as far as the check goes).
func minimalELF(m elf.Machine) []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1               // ELFCLASS64, little endian, version 1
	binary.LittleEndian.PutUint16(h[16:], 2) // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], uint16(m))
	binary.LittleEndian.PutUint32(h[20:], 1)
	binary.LittleEndian.PutUint16(h[52:], 64) // e_ehsize
	binary.LittleEndian.PutUint16(h[54:], 56) // e_phentsize
	binary.LittleEndian.PutUint16(h[58:], 64) // e_shentsize
	return h
}

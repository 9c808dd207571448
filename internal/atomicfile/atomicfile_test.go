package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReplacesReadOnlyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "id")
	if err := Write(path, "one", 0o444); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, "two", 0o444); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	fi, _ := os.Stat(path)
	if err != nil || string(b) != "two" || fi.Mode().Perm() != 0o444 {
		t.Fatalf("%q %v %v", b, fi.Mode(), err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

// A symlinked file (a distro's CA bundle link) keeps its link: the target
// is what gets replaced.
func TestWriteThroughASymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "real.crt")
	if err := os.WriteFile(target, []byte("OLD"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "bundle.crt")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := Write(link, "NEW", 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link replaced: %v %v", fi.Mode(), err)
	}
	if b, _ := os.ReadFile(target); string(b) != "NEW" {
		t.Fatalf("target holds %q", b)
	}
}

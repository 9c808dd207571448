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

package integration

import (
	"os"
	"syscall"
	"testing"

	"github.com/envd-project/envd/internal/users"
)

func statUID(t *testing.T, path string) uint32 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Uid
}

func uidOf(t *testing.T, name string) uint32 {
	t.Helper()
	u, err := users.Default.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return u.UID
}

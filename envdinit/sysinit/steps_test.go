package sysinit

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestEnsureHosts(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "hosts")
	// Missing file: both entries are written.
	if err := ensureHosts(p, "box"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	want := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbox\n"
	if string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
	// Idempotent.
	if err := ensureHosts(p, "box"); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(p); string(again) != want {
		t.Errorf("second run changed the file: %q", again)
	}
	// An existing file without a final newline keeps its lines; a name in a
	// comment does not count.
	if err := os.WriteFile(p, []byte("10.0.0.1 localhost # box"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ensureHosts(p, "box"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); string(got) != "10.0.0.1 localhost # box\n127.0.1.1\tbox\n" {
		t.Errorf("got %q", got)
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/mnt/a\040b\134c`); got != `/mnt/a b\c` {
		t.Errorf("got %q", got)
	}
	if got := unescapeMount("/plain"); got != "/plain" {
		t.Errorf("got %q", got)
	}
}

func TestRequestedAction(t *testing.T) {
	s := &System{}
	for sig, want := range map[syscall.Signal]Action{
		syscall.SIGUSR1: PowerOff, syscall.SIGUSR2: PowerOff,
		syscall.SIGTERM: Reboot, syscall.SIGINT: Reboot,
	} {
		s.Requested(sig)
		if got := Action(s.action.Load()); got != want {
			t.Errorf("%v: %v, want %v", sig, got, want)
		}
	}
}

package paths

import (
	"errors"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "/work"},
		{"~", "/home/u"},
		{"~/a/b", "/home/u/a/b"},
		{"rel/x", "/home/u/rel/x"},
		{"../../etc", "/etc"},
		{"/abs/../kept", "/abs/../kept"}, // absolute paths are used as is
		{".", "/home/u"},
	} {
		got, err := Resolve(c.in, "/home/u", "/work")
		if err != nil || got != c.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	if got, _ := Resolve("", "/home/u", ""); got != "/home/u" {
		t.Errorf("empty path without a default workdir: %q", got)
	}
	if _, err := Resolve("~other/x", "/home/u", ""); !errors.Is(err, ErrOtherHome) {
		t.Errorf("~other: %v", err)
	}
	// The default workdir goes through the same rules as a request path.
	for w, want := range map[string]string{"~/work": "/home/u/work", "work": "/home/u/work", "~": "/home/u", "/srv/../x": "/srv/../x"} {
		if got, err := Resolve("", "/home/u/", w); err != nil || got != want {
			t.Errorf("default workdir %q: %q, %v; want %q", w, got, err, want)
		}
	}
	if _, err := Resolve("", "/home/u", "~other"); !errors.Is(err, ErrOtherHome) {
		t.Errorf("default workdir ~other: %v", err)
	}
	// A user with no home: relative to envd's working directory.
	if got, err := Resolve("x", "", ""); err != nil || !strings.HasPrefix(got, "/") || !strings.HasSuffix(got, "/x") {
		t.Errorf("no home: %q, %v", got, err)
	}
}

func FuzzResolve(f *testing.F) {
	for _, s := range []string{"", "~", "~/x", "~x", "a/../../b", "/x", strings.Repeat("a/", 2500)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, err := Resolve(p, "/home/u", "/work")
		if err != nil {
			if !strings.HasPrefix(p, "~") {
				t.Fatalf("error for %q: %v", p, err)
			}
			return
		}
		if p != "" && !strings.HasPrefix(got, "/") {
			t.Fatalf("Resolve(%q) = %q is not absolute", p, got)
		}
	})
}

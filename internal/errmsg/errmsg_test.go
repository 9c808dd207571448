package errmsg

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestBound(t *testing.T) {
	if got := Bound("short"); got != "short" {
		t.Fatalf("short message changed: %q", got)
	}
	exact := strings.Repeat("x", Max)
	if Bound(exact) != exact {
		t.Fatal("a message of exactly Max bytes was cut")
	}
	in := "lstat /tmp/" + strings.Repeat("é", 100<<10) + ": file name too long"
	got := Bound(in)
	if len(got) > Max {
		t.Fatalf("%d bytes > %d", len(got), Max)
	}
	if !strings.HasPrefix(got, "lstat /tmp/é") || !strings.HasSuffix(got, ": file name too long") {
		t.Fatalf("head or tail lost: %.80q … %q", got, got[len(got)-80:])
	}
	if !utf8.ValidString(got) {
		t.Fatal("cut inside a rune")
	}
	// The marker names the bytes removed: kept + cut = original.
	i, j := strings.Index(got, "…["), strings.Index(got, " bytes cut]…")
	if i < 0 || j < 0 {
		t.Fatalf("no marker in %q", got)
	}
	var cut int
	for _, c := range got[i+len("…[") : j] {
		cut = cut*10 + int(c-'0')
	}
	kept := len(got) - (j + len(" bytes cut]…") - i)
	if kept+cut != len(in) {
		t.Fatalf("kept %d + cut %d != %d", kept, cut, len(in))
	}
}

func FuzzBound(f *testing.F) {
	f.Add("short")
	f.Add(strings.Repeat("a", Max+1))
	f.Add(strings.Repeat("\xff", 3*Max))
	f.Add(strings.Repeat("日本", Max))
	f.Fuzz(func(t *testing.T, s string) {
		got := Bound(s)
		if len(got) > Max {
			t.Fatalf("%d bytes", len(got))
		}
		if len(s) <= Max && got != s {
			t.Fatal("a message that fits was changed")
		}
		if utf8.ValidString(s) && !utf8.ValidString(got) {
			t.Fatal("valid UTF-8 became invalid")
		}
		if len(s) > Max && (!strings.Contains(got, " bytes cut]") || got[:10] != s[:10]) {
			t.Fatalf("cut message lost its head or marker: %.40q", got)
		}
	})
}

package ports

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func writeTables(t *testing.T, dir string, v4, v6 []Socket) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "tcp"), formatProcNetTCP(v4, false), 0o644); err != nil {
		t.Fatal(err)
	}
	if v6 != nil {
		if err := os.WriteFile(filepath.Join(dir, "tcp6"), formatProcNetTCP(v6, true), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func sortedKeys(socks []Socket) []Key {
	keys := make([]Key, 0, len(socks))
	for _, s := range socks {
		keys = append(keys, s.Key())
	}
	slices.SortFunc(keys, func(a, b Key) int { return int(a.Inode) - int(b.Inode) })
	return keys
}

func TestScannerReportsChanges(t *testing.T) {
	dir := t.TempDir()
	a := Socket{Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080, Inode: 1}
	b := Socket{Addr: netip.MustParseAddr("::1"), Port: 8080, Inode: 2}
	c := Socket{Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080, Inode: 3} // a restarted server
	sc := NewScanner(dir)

	// tcp6 absent: an IPv4-only kernel.
	writeTables(t, dir, []Socket{a}, nil)
	added, removed, err := sc.Scan()
	if err != nil || !slices.Equal(added, []Socket{a}) || len(removed) != 0 {
		t.Fatalf("first scan: +%v -%v %v", added, removed, err)
	}
	if added, removed, err = sc.Scan(); err != nil || len(added)+len(removed) != 0 {
		t.Fatalf("unchanged scan: +%v -%v %v", added, removed, err)
	}

	writeTables(t, dir, []Socket{c}, []Socket{b})
	added, removed, err = sc.Scan()
	if err != nil || !slices.Equal(sortedKeys(added), []Key{b.Key(), c.Key()}) || !slices.Equal(removed, []Socket{a}) {
		t.Fatalf("restart scan: +%v -%v %v", added, removed, err)
	}

	// A broken table is an error and keeps the previous state.
	if err := os.WriteFile(filepath.Join(dir, "tcp"), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err = sc.Scan(); err == nil {
		t.Fatal("garbage table: no error")
	}
	if got := sc.Listeners(); len(got) != 2 || got[b.Key()] != b || got[c.Key()] != c {
		t.Fatalf("state after error: %v", got)
	}

	writeTables(t, dir, []Socket{c}, []Socket{b})
	if added, removed, err = sc.Scan(); err != nil || len(added)+len(removed) != 0 {
		t.Fatalf("after error: +%v -%v %v", added, removed, err)
	}
	sc.Reset()
	if added, _, err = sc.Scan(); err != nil || len(added) != 2 {
		t.Fatalf("after reset: +%v %v", added, err)
	}

	if _, _, err := NewScanner(filepath.Join(dir, "missing")).Scan(); err == nil {
		t.Fatal("missing tcp table: no error")
	}
}

// TestScannerRealTables scans this host's tables (a big buffer growth path
// included) around a loopback listener the test opens.
func TestScannerRealTables(t *testing.T) {
	sc := NewScanner("")
	sc.buf = make([]byte, 64) // force the grow path
	if _, _, err := sc.Scan(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := ln.(*net.TCPListener)
	key := Key{Inode: socketInode(t, tl), Port: uint16(tl.Addr().(*net.TCPAddr).Port)}
	added, _, err := sc.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(added, func(s Socket) bool { return s.Key() == key }) {
		t.Fatalf("listener %v not reported as added: %v", key, added)
	}
	ln.Close()
	_, removed, err := sc.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(removed, func(s Socket) bool { return s.Key() == key }) {
		t.Fatalf("listener %v not reported as removed: %v", key, removed)
	}
}

func BenchmarkScan(b *testing.B) {
	sc := NewScanner("")
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := sc.Scan(); err != nil {
			b.Fatal(err)
		}
	}
}

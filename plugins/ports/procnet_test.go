package ports

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const header4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
const header6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

// formatProcNetTCP writes socks the way the kernel does (tcp4_seq_show /
// tcp6_seq_show), all in state LISTEN; v6 chooses the tcp6 layout.
func formatProcNetTCP(socks []Socket, v6 bool) []byte {
	var b strings.Builder
	if v6 {
		b.WriteString(header6)
	} else {
		b.WriteString(header4)
	}
	for i, s := range socks {
		var addr string
		if v6 {
			a := s.Addr.As16()
			for w := range 4 {
				addr += fmt.Sprintf("%08X", binary.NativeEndian.Uint32(a[w*4:]))
			}
			fmt.Fprintf(&b, "%4d: %s:%04X 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 %5d        0 %d 1 0000000000000000 100 0 0 10 0\n",
				i, addr, s.Port, s.UID, s.Inode)
		} else {
			a := s.Addr.As4()
			addr = fmt.Sprintf("%08X", binary.NativeEndian.Uint32(a[:]))
			fmt.Fprintf(&b, "%4d: %s:%04X 00000000:0000 0A 00000000:00000000 00:00000000 00000000 %5d        0 %d 1 0000000000000000 100 0 0 10 0\n",
				i, addr, s.Port, s.UID, s.Inode)
		}
	}
	return []byte(b.String())
}

// Lines as this host's kernel prints them (little-endian words).
const sample4 = header4 +
	"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0\n" +
	"   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 183 1 00000000736144a1 100 0 0 10 0\n" +
	"   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 5555 1 0000000000000000 20 4 30 10 -1\n" +
	"   3: 1500FEA9:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0\n"

const sample6 = header6 +
	"   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9001 1 0000000000000000 100 0 0 10 0\n" +
	"   1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9002 1 0000000000000000 100 0 0 10 0\n" +
	"   2: 0000000000000000FFFF00000100007F:1389 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9003 1 0000000000000000 100 0 0 10 0\n"

func TestParseProcNetTCPSamples(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("samples are little-endian; this host is big-endian")
	}
	got, err := ParseProcNetTCP(nil, []byte(sample4))
	if err != nil {
		t.Fatal(err)
	}
	want := []Socket{
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080, Inode: 4242, UID: 1000},
		{Addr: netip.MustParseAddr("0.0.0.0"), Port: 2024, Inode: 183},
		{Addr: netip.MustParseAddr("169.254.0.21"), Port: 80, Inode: 77},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("tcp: got %v, want %v", got, want)
	}
	got, err = ParseProcNetTCP(got[:0], []byte(sample6))
	if err != nil {
		t.Fatal(err)
	}
	want = []Socket{
		{Addr: netip.MustParseAddr("::1"), Port: 3000, Inode: 9001},
		{Addr: netip.MustParseAddr("::"), Port: 22, Inode: 9002},
		{Addr: netip.MustParseAddr("::ffff:127.0.0.1"), Port: 5001, Inode: 9003},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("tcp6: got %v, want %v", got, want)
	}
}

func TestParseProcNetTCPErrors(t *testing.T) {
	line := func(s string) string { return header4 + s + "\n" }
	ok := "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0"
	if _, err := ParseProcNetTCP(nil, []byte(line(ok))); err != nil {
		t.Fatalf("valid line: %v", err)
	}
	for name, data := range map[string]string{
		"empty":        "",
		"no header":    ok + "\n",
		"short":        line("   0: 0100007F:1F90 00000000:0000 0A"),
		"bad slot":     line(strings.Replace(ok, "0:", "0", 1)),
		"bad state":    line(strings.Replace(ok, " 0A ", " 0X ", 1)),
		"long state":   line(strings.Replace(ok, " 0A ", " 00A ", 1)),
		"no port":      line(strings.Replace(ok, "0100007F:1F90", "0100007F", 1)),
		"short port":   line(strings.Replace(ok, ":1F90", ":F90", 1)),
		"bad addr":     line(strings.Replace(ok, "0100007F", "0100007G", 1)),
		"addr width":   line(strings.Replace(ok, "0100007F", "0100007F00", 1)),
		"bad uid":      line(strings.Replace(ok, " 1000 ", " 10x0 ", 1)),
		"uid overflow": line(strings.Replace(ok, " 1000 ", " 4294967296 ", 1)),
		"bad inode":    line(strings.Replace(ok, " 4242 ", " -1 ", 1)),
		"inode overflow": line(strings.Replace(ok, " 4242 ",
			" 18446744073709551616 ", 1)),
	} {
		if got, err := ParseProcNetTCP(nil, []byte(data)); err == nil {
			t.Errorf("%s: no error, got %v", name, got)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// Sockets in other states are skipped without looking at the rest of the line.
	if got, err := ParseProcNetTCP(nil, []byte(line(strings.Replace(ok, " 0A ", " 01 ", 1)))); err != nil || len(got) != 0 {
		t.Fatalf("established socket: got %v, %v", got, err)
	}
}

// socketInode returns the inode of a listener's socket, as /proc/net/tcp shows it.
func socketInode(t testing.TB, ln *net.TCPListener) uint64 {
	t.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return st.Ino
}

// TestParseRealProcNet checks the parser against this host's own tables,
// with listeners this test opens on loopback.
func TestParseRealProcNet(t *testing.T) {
	for _, tc := range []struct{ network, addr, file string }{
		{"tcp4", "127.0.0.1:0", "/proc/net/tcp"},
		{"tcp6", "[::1]:0", "/proc/net/tcp6"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			ln, err := net.Listen(tc.network, tc.addr)
			if err != nil {
				t.Skipf("cannot listen on %s: %v", tc.addr, err)
			}
			tl := ln.(*net.TCPListener)
			want := Socket{
				Addr:  tl.Addr().(*net.TCPAddr).AddrPort().Addr(),
				Port:  tl.Addr().(*net.TCPAddr).AddrPort().Port(),
				Inode: socketInode(t, tl),
				UID:   uint32(os.Getuid()),
			}
			data, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			socks, err := ParseProcNetTCP(nil, data)
			if err != nil {
				t.Fatalf("parse %s: %v", tc.file, err)
			}
			if !slices.Contains(socks, want) {
				t.Fatalf("%v not among %d listeners in %s: %v", want, len(socks), tc.file, socks)
			}
			ln.Close()
			data, err = os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			if socks, err = ParseProcNetTCP(socks[:0], data); err != nil {
				t.Fatal(err)
			}
			if slices.Contains(socks, want) {
				t.Fatalf("%v still listed after close", want)
			}
		})
	}
}

func FuzzParseProcNetTCP(f *testing.F) {
	f.Add([]byte(sample4))
	f.Add([]byte(sample6))
	f.Add([]byte(header4))
	f.Add([]byte(header4 + "   0: 0100007F:1F90 00000000:0000 0A 0 0 0  1000 0 4242\n"))
	f.Add([]byte(header6 + "   0: 0000000000000000FFFF00000100007F:1389 x 0A a b c 0 0 1\n\n"))
	if data, err := os.ReadFile("/proc/net/tcp"); err == nil {
		f.Add(data)
	}
	if data, err := os.ReadFile("/proc/net/tcp6"); err == nil {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		socks, err := ParseProcNetTCP(nil, data)
		if err != nil {
			return
		}
		// What parses must survive a round trip through the kernel's format.
		var v4, v6 []Socket
		for _, s := range socks {
			if s.Addr.Is4() {
				v4 = append(v4, s)
			} else {
				v6 = append(v6, s)
			}
		}
		for _, part := range []struct {
			socks []Socket
			v6    bool
		}{{v4, false}, {v6, true}} {
			again, err := ParseProcNetTCP(nil, formatProcNetTCP(part.socks, part.v6))
			if err != nil {
				t.Fatalf("re-parse: %v", err)
			}
			if !slices.Equal(again, part.socks) {
				t.Fatalf("round trip: got %v, want %v", again, part.socks)
			}
		}
	})
}

func BenchmarkParseProcNetTCP(b *testing.B) {
	socks := make([]Socket, 500)
	for i := range socks {
		socks[i] = Socket{Addr: netip.AddrFrom4([4]byte{127, 0, 0, 1}), Port: uint16(1000 + i), Inode: uint64(100000 + i)}
	}
	data := formatProcNetTCP(socks, false)
	var dst []Socket
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if dst, err = ParseProcNetTCP(dst[:0], data); err != nil || len(dst) != len(socks) {
			b.Fatal(err, len(dst))
		}
	}
}

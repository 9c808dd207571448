package ports

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Scanner reads the kernel's TCP socket tables and reports which listeners
// appeared and disappeared since the previous scan. It keeps its buffers and
// maps between scans, so a steady state costs two open/read/close cycles and
// no allocation. It never walks /proc/*/fd: the tables alone carry what is
// needed, and Wrenn found the fd walk unreliable across snapshot/restore
// (WIRE §12 item 36). A Scanner is not safe for concurrent use.
type Scanner struct {
	paths          [2]string // tcp, tcp6
	buf            []byte
	socks          []Socket
	cur, prev      map[Key]Socket
	added, removed []Socket
}

// NewScanner returns a scanner of dir/tcp and dir/tcp6; dir "" means /proc/net
// (the tables of the caller's network namespace).
func NewScanner(dir string) *Scanner {
	if dir == "" {
		dir = "/proc/net"
	}
	return &Scanner{
		paths: [2]string{filepath.Join(dir, "tcp"), filepath.Join(dir, "tcp6")},
		buf:   make([]byte, 16<<10),
		cur:   make(map[Key]Socket),
		prev:  make(map[Key]Socket),
	}
}

// Scan reads both tables once and returns the LISTEN sockets added and removed
// since the last successful scan (all of them after NewScanner or Reset). The
// slices are reused by the next Scan. On error the previous state is kept, so
// one failed read does not look like every listener going away. A missing tcp6
// (kernel without IPv6) counts as empty.
func (s *Scanner) Scan() (added, removed []Socket, err error) {
	s.socks = s.socks[:0]
	for i, p := range s.paths {
		n, err := s.read(p)
		if err != nil {
			if i == 1 && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, nil, err
		}
		if s.socks, err = ParseProcNetTCP(s.socks, s.buf[:n]); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	s.prev, s.cur = s.cur, s.prev
	clear(s.cur)
	s.added, s.removed = s.added[:0], s.removed[:0]
	for _, sk := range s.socks {
		k := sk.Key()
		s.cur[k] = sk
		if _, ok := s.prev[k]; !ok {
			s.added = append(s.added, sk)
		}
	}
	for k, sk := range s.prev {
		if _, ok := s.cur[k]; !ok {
			s.removed = append(s.removed, sk)
		}
	}
	return s.added, s.removed, nil
}

// Listeners returns the LISTEN sockets of the last successful scan. The map is
// owned by the scanner and changes on the next Scan.
func (s *Scanner) Listeners() map[Key]Socket { return s.cur }

// Reset forgets the last scan, so the next one reports every listener as added.
func (s *Scanner) Reset() { clear(s.cur) }

// read reads the whole file into s.buf, growing it as needed. /proc files have
// no size, so the only way is to read until EOF.
func (s *Scanner) read(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	for {
		if n == len(s.buf) {
			s.buf = append(s.buf, make([]byte, len(s.buf))...)
		}
		m, err := f.Read(s.buf[n:])
		n += m
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", path, err)
		}
		if m == 0 {
			return n, nil
		}
	}
}

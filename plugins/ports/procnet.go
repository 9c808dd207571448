package ports

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Socket is one TCP socket in state LISTEN, as /proc/net/tcp{,6} shows it.
type Socket struct {
	Addr  netip.Addr // local address; IPv4 from tcp, IPv6 (possibly v4-mapped) from tcp6
	Port  uint16
	Inode uint64 // socket inode: with Port, the identity of a listener across scans
	UID   uint32
}

// Key identifies a listener across scans. The inode tells a restarted server
// apart from the one before it even when both use the same port.
type Key struct {
	Inode uint64
	Port  uint16
}

// Key returns the scan identity of s.
func (s Socket) Key() Key { return Key{Inode: s.Inode, Port: s.Port} }

// stateListen is TCP_LISTEN in include/net/tcp_states.h, printed as "0A".
const stateListen = 0x0A

// ParseProcNetTCP appends to dst the LISTEN sockets in data, the whole content of
// /proc/net/tcp or /proc/net/tcp6 (the address width tells the two apart). It
// allocates nothing beyond growing dst, so a scanner can call it every interval.
//
// Addresses are printed by the kernel as 32-bit words in host byte order, so
// they are decoded with the native byte order of this machine. The format is
// checked strictly: a malformed line is an error naming the line, since it
// means the file is not what the kernel writes and no result can be trusted.
func ParseProcNetTCP(dst []Socket, data []byte) ([]Socket, error) {
	header, rest, _ := bytes.Cut(data, []byte{'\n'})
	if !bytes.Contains(header, []byte("local_address")) {
		return dst, errors.New("proc net tcp: missing header line")
	}
	for lineNo := 2; len(rest) > 0; lineNo++ {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte{'\n'})
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		s, listen, err := parseLine(line)
		if err != nil {
			return dst, fmt.Errorf("proc net tcp: line %d: %w", lineNo, err)
		}
		if listen {
			dst = append(dst, s)
		}
	}
	return dst, nil
}

// Column indexes of a socket line:
// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
const (
	colSlot  = 0
	colLocal = 1
	colState = 3
	colUID   = 7
	colInode = 9
)

func parseLine(line []byte) (s Socket, listen bool, err error) {
	var local, state, uid, inode []byte
	col := 0
	for f := range bytes.FieldsSeq(line) {
		switch col {
		case colSlot:
			if len(f) < 2 || f[len(f)-1] != ':' {
				return s, false, fmt.Errorf("bad slot field %q", f)
			}
		case colLocal:
			local = f
		case colState:
			state = f
		case colUID:
			uid = f
		case colInode:
			inode = f
		}
		col++
		if col > colInode {
			break
		}
	}
	if col <= colInode {
		return s, false, fmt.Errorf("%d fields, want at least %d", col, colInode+1)
	}
	st, ok := parseHex(state, 2)
	if !ok {
		return s, false, fmt.Errorf("bad state %q", state)
	}
	if st != stateListen {
		return s, false, nil
	}
	hexAddr, hexPort, ok := bytes.Cut(local, []byte{':'})
	if !ok {
		return s, false, fmt.Errorf("bad local address %q", local)
	}
	port, ok := parseHex(hexPort, 4)
	if !ok {
		return s, false, fmt.Errorf("bad local port %q", local)
	}
	s.Port = uint16(port)
	switch len(hexAddr) {
	case 8:
		w, ok := parseHex(hexAddr, 8)
		if !ok {
			return s, false, fmt.Errorf("bad local address %q", local)
		}
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], uint32(w))
		s.Addr = netip.AddrFrom4(b)
	case 32:
		var b [16]byte
		for i := range 4 {
			w, ok := parseHex(hexAddr[i*8:i*8+8], 8)
			if !ok {
				return s, false, fmt.Errorf("bad local address %q", local)
			}
			binary.NativeEndian.PutUint32(b[i*4:], uint32(w))
		}
		s.Addr = netip.AddrFrom16(b)
	default:
		return s, false, fmt.Errorf("bad local address %q", local)
	}
	u, ok := parseDec(uid, 1<<32-1)
	if !ok {
		return s, false, fmt.Errorf("bad uid %q", uid)
	}
	s.UID = uint32(u)
	if s.Inode, ok = parseDec(inode, 1<<64-1); !ok {
		return s, false, fmt.Errorf("bad inode %q", inode)
	}
	return s, true, nil
}

// parseHex parses exactly width hex digits (the kernel pads with %0NX).
func parseHex(b []byte, width int) (uint64, bool) {
	if len(b) != width {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(d)
	}
	return v, true
}

// parseDec parses an unsigned decimal no larger than limit.
func parseDec(b []byte, limit uint64) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (limit-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

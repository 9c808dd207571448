package sysinit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The Debian cloud kernel has no CONFIG_IP_PNP (ip= does nothing), so PID 1
// configures its interface itself, over rtnetlink: a handful of requests,
// no dependency on iproute2 in the image.

// nlConn is one NETLINK_ROUTE socket in the calling thread's network
// namespace.
type nlConn struct {
	fd  int
	seq uint32
}

func dialNetlink() (*nlConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	// A kernel that never answers must not hang PID 1.
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &nlConn{fd: fd}, nil
}

func (c *nlConn) Close() error { return unix.Close(c.fd) }

// request sends one message (header added here) and waits for its ack.
func (c *nlConn) request(typ uint16, flags uint16, body []byte) error {
	c.seq++
	hdr := unix.NlMsghdr{
		Len:   uint32(unix.SizeofNlMsghdr + len(body)),
		Type:  typ,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK | flags,
		Seq:   c.seq,
	}
	msg := make([]byte, 0, hdr.Len)
	msg = append(msg, (*[unix.SizeofNlMsghdr]byte)(unsafe.Pointer(&hdr))[:]...)
	msg = append(msg, body...)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscallParseNetlink(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != c.seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("netlink: short error message")
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}

func syscallParseNetlink(b []byte) ([]netlinkMessage, error) {
	var out []netlinkMessage
	for len(b) >= unix.SizeofNlMsghdr {
		h := *(*unix.NlMsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return nil, fmt.Errorf("netlink: bad message length %d", l)
		}
		out = append(out, netlinkMessage{Header: h, Data: b[unix.SizeofNlMsghdr:l]})
		step := nlAlign(l)
		if step > len(b) {
			step = len(b)
		}
		b = b[step:]
	}
	return out, nil
}

type netlinkMessage struct {
	Header unix.NlMsghdr
	Data   []byte
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// attr encodes one rtattr.
func attr(typ uint16, val []byte) []byte {
	l := unix.SizeofRtAttr + len(val)
	b := make([]byte, nlAlign(l))
	binary.NativeEndian.PutUint16(b[0:2], uint16(l))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[unix.SizeofRtAttr:], val)
	return b
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

// linkUp sets IFF_UP on the interface with index idx.
func (c *nlConn) linkUp(idx int) error {
	msg := unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: int32(idx), Flags: unix.IFF_UP, Change: unix.IFF_UP}
	body := (*[unix.SizeofIfInfomsg]byte)(unsafe.Pointer(&msg))[:]
	if err := c.request(unix.RTM_NEWLINK, 0, append([]byte(nil), body...)); err != nil {
		return fmt.Errorf("set link %d up: %w", idx, err)
	}
	return nil
}

// addAddr adds an IPv4 address with its prefix (and so the prefix route).
func (c *nlConn) addAddr(idx int, pfx netip.Prefix) error {
	msg := unix.IfAddrmsg{Family: unix.AF_INET, Prefixlen: uint8(pfx.Bits()), Index: uint32(idx)}
	body := append([]byte(nil), (*[unix.SizeofIfAddrmsg]byte)(unsafe.Pointer(&msg))[:]...)
	ip := pfx.Addr().AsSlice()
	body = append(body, attr(unix.IFA_LOCAL, ip)...)
	body = append(body, attr(unix.IFA_ADDRESS, ip)...)
	if bits := pfx.Bits(); bits < 31 {
		bc := pfx.Masked().Addr().As4()
		host := ^uint32(0) >> bits
		v := binary.BigEndian.Uint32(bc[:]) | host
		binary.BigEndian.PutUint32(bc[:], v)
		body = append(body, attr(unix.IFA_BROADCAST, bc[:])...)
	}
	if err := c.request(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body); err != nil {
		return fmt.Errorf("add address %s to link %d: %w", pfx, idx, err)
	}
	return nil
}

// addDefaultRoute adds 0.0.0.0/0 via gw out of link idx.
func (c *nlConn) addDefaultRoute(idx int, gw netip.Addr) error {
	msg := unix.RtMsg{
		Family:   unix.AF_INET,
		Table:    unix.RT_TABLE_MAIN,
		Protocol: unix.RTPROT_BOOT,
		Scope:    unix.RT_SCOPE_UNIVERSE,
		Type:     unix.RTN_UNICAST,
	}
	body := append([]byte(nil), (*[unix.SizeofRtMsg]byte)(unsafe.Pointer(&msg))[:]...)
	body = append(body, attr(unix.RTA_GATEWAY, gw.AsSlice())...)
	body = append(body, attr(unix.RTA_OIF, u32(uint32(idx)))...)
	if err := c.request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body); err != nil {
		return fmt.Errorf("add default route via %s: %w", gw, err)
	}
	return nil
}

// hasIPv4 reports whether the interface already has an IPv4 address (set
// by the kernel, a previous boot stage, or the host's tooling).
func hasIPv4(ifc *net.Interface) (bool, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return false, fmt.Errorf("addresses of %s: %w", ifc.Name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return true, nil
		}
	}
	return false, nil
}

// waitInterface waits for an interface to appear by name: a NIC driver
// loaded a moment ago may still be probing. /sys is not needed.
func waitInterface(name string, timeout time.Duration) (*net.Interface, error) {
	deadline := time.Now().Add(timeout)
	for {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			return ifc, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("interface %s did not appear within %s: %w", name, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// LoopbackUp brings lo up (the kernel adds 127.0.0.1 itself).
func LoopbackUp() error {
	ifc, err := net.InterfaceByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	c, err := dialNetlink()
	if err != nil {
		return err
	}
	defer c.Close()
	return c.linkUp(ifc.Index)
}

// ConfigureInterface brings the interface up and, unless it already holds
// an IPv4 address, gives it addr and a default route via gw (none when gw
// is the zero Addr). It reports whether it changed the addressing.
func ConfigureInterface(name string, addr netip.Prefix, gw netip.Addr, wait time.Duration) (configured bool, err error) {
	ifc, err := waitInterface(name, wait)
	if err != nil {
		return false, err
	}
	c, err := dialNetlink()
	if err != nil {
		return false, err
	}
	defer c.Close()
	if err := c.linkUp(ifc.Index); err != nil {
		return false, err
	}
	has, err := hasIPv4(ifc)
	if err != nil {
		return false, err
	}
	if has {
		return false, nil
	}
	if err := c.addAddr(ifc.Index, addr); err != nil {
		return false, err
	}
	if gw.IsValid() {
		if err := c.addDefaultRoute(ifc.Index, gw); err != nil {
			return true, err
		}
	}
	return true, nil
}

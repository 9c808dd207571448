// Package handoff passes a client's TCP connection from envd-init to a
// plugin (SCM_RIGHTS over a Unix seqpacket socket), together with the bytes
// envd-init already read from it. It runs in envd-init (the sender) and
// envd-fs (the receiver). The plugin then serves the request on the client's
// own socket: bulk file bytes cross no extra process and no extra copy, and
// downloads can use sendfile (docs/architecture.md: a re-framing hop ran at a
// third of the direct speed).
//
// A message is: uvarint length, then response headers the plugin must add
// (HTTP header block: CORS headers envd-init's middleware already decided),
// then the raw request bytes (head and any buffered body). The plugin closes
// the connection after one response, so the client's next request reaches
// envd-init again.
package handoff

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// sendTimeout bounds one handoff, acknowledgement included.
const sendTimeout = 5 * time.Second

// MaxMessage bounds one handoff message (seqpacket keeps it whole).
const MaxMessage = 64 << 10

// ErrUnacknowledged means the connection was sent but the receiver did
// not confirm taking it: it may still serve it, so the sender must not
// answer on it (shut it down instead).
var ErrUnacknowledged = errors.New("handoff: sent but not acknowledged")

// ErrTooLarge means the request head does not fit one message; the caller
// should serve the request another way.
var ErrTooLarge = errors.New("handoff: request head too large")

// Encode builds a handoff message.
func Encode(extra http.Header, request []byte) ([]byte, error) {
	var hb bytes.Buffer
	if err := extra.Write(&hb); err != nil {
		return nil, err
	}
	msg := binary.AppendUvarint(nil, uint64(hb.Len()))
	msg = append(msg, hb.Bytes()...)
	msg = append(msg, request...)
	if len(msg) > MaxMessage {
		return nil, ErrTooLarge
	}
	return msg, nil
}

// Decode splits a handoff message.
func Decode(msg []byte) (http.Header, []byte, error) {
	n, k := binary.Uvarint(msg)
	if k <= 0 || n > uint64(len(msg)-k) {
		return nil, nil, errors.New("handoff: malformed message")
	}
	hdr := msg[k : k+int(n)]
	extra := http.Header{}
	if len(hdr) > 0 {
		mh, err := textproto.NewReader(bufio.NewReader(io.MultiReader(bytes.NewReader(hdr), bytes.NewReader([]byte("\r\n"))))).ReadMIMEHeader()
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("handoff: headers: %w", err)
		}
		extra = http.Header(mh)
	}
	return extra, msg[k+int(n):], nil
}

// RequestHead rebuilds the wire form of r's head as the client sent it
// (net/http moved Host and Transfer-Encoding out of the header map).
func RequestHead(r *http.Request) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s %s\r\nHost: %s\r\n", r.Method, r.RequestURI, r.Proto, r.Host)
	h := r.Header.Clone()
	h.Del("Transfer-Encoding")
	if len(r.TransferEncoding) > 0 {
		fmt.Fprintf(&b, "Transfer-Encoding: %s\r\n", r.TransferEncoding[len(r.TransferEncoding)-1])
	}
	_ = h.Write(&b)
	b.WriteString("\r\n")
	return b.Bytes()
}

// Sender is a connection to a receiver, made before the client's
// connection is taken, so that a receiver that is down costs nothing.
type Sender struct {
	c *net.UnixConn
}

// Dial connects to the receiver at path.
func Dial(ctx context.Context, path string) (*Sender, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("handoff: dial %s: %w", path, err)
	}
	return &Sender{c: c.(*net.UnixConn)}, nil
}

// Close releases the sender.
func (s *Sender) Close() error { return s.c.Close() }

// Send passes conn with msg and waits for the receiver to take it. conn
// stays open here; the caller closes its copy afterwards.
func (s *Sender) Send(conn *net.TCPConn, msg []byte) error {
	// A receiver that stopped accepting must not hold the client forever.
	_ = s.c.SetDeadline(time.Now().Add(sendTimeout))
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var sendErr error
	err = raw.Control(func(fd uintptr) {
		_, _, sendErr = s.c.WriteMsgUnix(msg, unix.UnixRights(int(fd)), nil)
	})
	if err == nil {
		err = sendErr
	}
	if err != nil {
		return fmt.Errorf("handoff: send: %w", err)
	}
	// The acknowledgement reports a failure here, while the caller can
	// still answer the client.
	var ack [1]byte
	if _, err := s.c.Read(ack[:]); err != nil {
		return fmt.Errorf("%w: %w", ErrUnacknowledged, err)
	}
	return nil
}

// Listener yields handed-off connections as a net.Listener, each replaying
// the bytes envd-init had read before the rest of the socket.
type Listener struct {
	ln    *net.UnixListener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

// Listen accepts handoffs on a new Unix seqpacket socket at path.
func Listen(path string) (*Listener, error) {
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("handoff: listen %s: %w", path, err)
	}
	l := &Listener{ln: ln, conns: make(chan net.Conn), done: make(chan struct{})}
	go l.loop()
	return l, nil
}

func (l *Listener) loop() {
	var backoff time.Duration
	for {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.Close()
				return
			}
			// Out of fds for a moment (EMFILE, ENFILE): like http.Server,
			// wait and go on; giving up would end the fast path for good
			// and leave queued handoffs unacknowledged.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
				continue
			case <-l.done:
				return
			}
		}
		backoff = 0
		go l.receive(c)
	}
}

func (l *Listener) receive(c *net.UnixConn) {
	defer c.Close()
	buf := make([]byte, MaxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	fds := parseRights(oob[:oobn])
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return
	}
	f := os.NewFile(uintptr(fds[0]), "handoff")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return
	}
	tcp, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		return
	}
	extra, prefix, err := Decode(buf[:n])
	if err != nil {
		tcp.Close()
		return
	}
	conn := &Conn{TCPConn: tcp, r: io.MultiReader(bytes.NewReader(prefix), tcp), Extra: extra}
	select {
	case l.conns <- conn:
		_, _ = c.Write([]byte{1})
	case <-l.done:
		conn.Close()
	}
}

func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if r, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, r...)
		}
	}
	return fds
}

// Accept implements net.Listener.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *Listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		_ = l.ln.Close()
	})
	return nil
}

// Addr implements net.Listener.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Conn is a handed-off client connection. It embeds the *net.TCPConn so
// net/http still finds ReadFrom (sendfile) on it.
type Conn struct {
	*net.TCPConn
	r io.Reader
	// Extra are response headers envd-init decided (CORS).
	Extra http.Header
}

func (c *Conn) Read(p []byte) (int, error) { return c.r.Read(p) }

type ctxKey struct{}

// ConnContext is an http.Server ConnContext that remembers the handoff.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if hc, ok := c.(*Conn); ok {
		return context.WithValue(ctx, ctxKey{}, hc)
	}
	return ctx
}

// Serve wraps the handler of handed-off connections: envd-init's response
// headers are added and the connection closes after the response.
func Serve(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hc, ok := r.Context().Value(ctxKey{}).(*Conn); ok {
			for k, v := range hc.Extra {
				w.Header()[k] = v
			}
		}
		w.Header().Set("Connection", "close")
		next.ServeHTTP(w, r)
	})
}

// Package handoff passes a client's TCP connection from envd-init to a
// plugin (SCM_RIGHTS over a Unix seqpacket socket) for one request, and
// back again after the response. It runs in envd-init (Sender) and in
// envd-fs (Listener and Conn).
//
// The plugin serves the request on the client's own socket: bulk file bytes
// cross no extra process and no extra copy, and downloads can use sendfile
// (docs/architecture.md: a re-framing hop ran at a third of the direct speed).
// envd-init keeps its own descriptor of the socket and does not touch it
// while the plugin holds the request; when the response is out the plugin
// returns the connection with any bytes it read beyond the request, and
// envd-init serves the client's next request: the connection stays alive.
//
// One handoff is one seqpacket connection carrying four messages:
//
//	init -> plugin  the request (framing, extra response headers, bytes already read) + the fd
//	plugin -> init  'A': taken; the plugin does nothing with it yet
//	init -> plugin  'G': go. Only now may the plugin act. envd-init that gave
//	                up waiting for 'A' closes instead, and the plugin drops the fd
//	                unread whenever it gets to it: a handoff envd-init gave up on
//	                never runs later.
//	plugin -> init  'K' + leftover bytes: the response is complete, the connection
//	                is envd-init's again; EOF or 'C': the plugin closed it.
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
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// AckTimeout bounds how long envd-init waits for a plugin to take a
// connection before it answers the client itself.
const AckTimeout = 5 * time.Second

// MaxMessage bounds one handoff message (seqpacket keeps it whole).
const MaxMessage = 64 << 10

// ErrUnacknowledged means the receiver did not take the connection in time.
// The handoff is revoked: the receiver will never act on it, and the sender
// may answer the client itself.
var ErrUnacknowledged = errors.New("handoff: not taken in time")

// ErrTooLarge means the request head does not fit one message; the caller
// should serve the request another way.
var ErrTooLarge = errors.New("handoff: request head too large")

const (
	msgAck   = 'A'
	msgGo    = 'G'
	msgKeep  = 'K'
	msgClose = 'C'
)

// Chunked is Framing.Body for a chunked request body.
const Chunked = -1

// Framing says where the request handed over ends, so that the receiver
// gives its HTTP server exactly one request and keeps what follows for the
// connection's next owner.
type Framing struct {
	// Head is the length of the request head at the start of the bytes.
	Head int
	// Body is the body's Content-Length, or Chunked.
	Body int64
}

// FramingOf is the framing of r as net/http parsed it, for a head of
// headLen bytes.
func FramingOf(r *http.Request, headLen int) Framing {
	f := Framing{Head: headLen, Body: max(r.ContentLength, 0)}
	for _, te := range r.TransferEncoding {
		if strings.EqualFold(te, "chunked") {
			f.Body = Chunked
		}
	}
	return f
}

// Encode builds a handoff message.
func Encode(extra http.Header, f Framing, request []byte) ([]byte, error) {
	var hb bytes.Buffer
	if err := extra.Write(&hb); err != nil {
		return nil, err
	}
	msg := binary.AppendUvarint(nil, uint64(f.Head))
	msg = binary.AppendVarint(msg, f.Body)
	msg = binary.AppendUvarint(msg, uint64(hb.Len()))
	msg = append(msg, hb.Bytes()...)
	msg = append(msg, request...)
	if len(msg) > MaxMessage {
		return nil, ErrTooLarge
	}
	return msg, nil
}

// Decode splits a handoff message.
func Decode(msg []byte) (http.Header, Framing, []byte, error) {
	var f Framing
	bad := errors.New("handoff: malformed message")
	head, k := binary.Uvarint(msg)
	if k <= 0 {
		return nil, f, nil, bad
	}
	msg = msg[k:]
	body, k := binary.Varint(msg)
	if k <= 0 || body < Chunked {
		return nil, f, nil, bad
	}
	msg = msg[k:]
	n, k := binary.Uvarint(msg)
	if k <= 0 || n > uint64(len(msg)-k) {
		return nil, f, nil, bad
	}
	hdr := msg[k : k+int(n)]
	rest := msg[k+int(n):]
	if head > uint64(len(rest)) {
		return nil, f, nil, bad
	}
	f = Framing{Head: int(head), Body: body}
	extra := http.Header{}
	if len(hdr) > 0 {
		mh, err := textproto.NewReader(bufio.NewReader(io.MultiReader(bytes.NewReader(hdr), bytes.NewReader([]byte("\r\n"))))).ReadMIMEHeader()
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, f, nil, fmt.Errorf("handoff: headers: %w", err)
		}
		extra = http.Header(mh)
	}
	return extra, f, rest, nil
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

// Sender is one handoff's connection to a receiver, made before the
// client's connection is taken, so that a receiver that is down costs
// nothing.
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

// Close releases the sender. Before Send returned nil it also revokes the
// handoff.
func (s *Sender) Close() error { return s.c.Close() }

// Send passes conn with msg and waits up to AckTimeout for the receiver to
// take it; then tells it to go. Any error means the receiver never acts
// on the request (ErrUnacknowledged: it did not answer in time), and the
// caller still owns conn and may answer on it. conn stays open here.
func (s *Sender) Send(conn *net.TCPConn, msg []byte) error {
	_ = s.c.SetDeadline(time.Now().Add(AckTimeout))
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
	var ack [1]byte
	if n, err := s.c.Read(ack[:]); err != nil || n != 1 || ack[0] != msgAck {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%w: %w", ErrUnacknowledged, err)
	}
	// The receiver waits for this before it acts; if it cannot be written,
	// the receiver is gone and acts on nothing.
	if _, err := s.c.Write([]byte{msgGo}); err != nil {
		return fmt.Errorf("handoff: go: %w", err)
	}
	_ = s.c.SetDeadline(time.Time{})
	return nil
}

// Wait blocks until the receiver is done with the connection sent: keep
// reports that the connection is the sender's again, with leftover, the
// bytes the receiver read beyond its request; otherwise the receiver closed
// it (or died) and the sender should close its copy.
func (s *Sender) Wait() (leftover []byte, keep bool) {
	buf := make([]byte, MaxMessage)
	n, err := s.c.Read(buf)
	if err != nil || n == 0 || buf[0] != msgKeep {
		return nil, false
	}
	return bytes.Clone(buf[1:n]), true
}

// Listener yields handed-off connections as a net.Listener; each replays
// the bytes envd-init had read, then the rest of its one request.
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
			// wait and go on; giving up would end the fast path for good.
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

var msgPool = sync.Pool{New: func() any { b := make([]byte, MaxMessage); return &b }}

func (l *Listener) receive(c *net.UnixConn) {
	bp := msgPool.Get().(*[]byte)
	defer msgPool.Put(bp)
	buf := *bp
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	fds := parseRights(oob[:oobn])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		c.Close()
		return
	}
	// Closing our copy of the fd never ends the client's connection:
	// envd-init holds one too until we return it.
	f := os.NewFile(uintptr(fds[0]), "handoff")
	extra, framing, prefix, derr := Decode(buf[:n])
	var ok [1]byte
	if derr == nil {
		_, err = c.Write([]byte{msgAck})
	}
	if derr != nil || err != nil {
		f.Close()
		c.Close()
		return
	}
	// Nothing is done with the request before envd-init says go: it may
	// have given up waiting (we were stopped, or slow) and answered the
	// client itself.
	if k, err := c.Read(ok[:]); err != nil || k != 1 || ok[0] != msgGo {
		f.Close()
		c.Close()
		return
	}
	nc, err := net.FileConn(f)
	f.Close()
	tcp, isTCP := nc.(*net.TCPConn)
	if err != nil || !isTCP {
		if nc != nil {
			nc.Close()
		}
		c.Close()
		return
	}
	conn := newConn(tcp, c, extra, framing, bytes.Clone(prefix))
	select {
	case l.conns <- conn:
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

type ctxKey struct{}

// ConnContext is an http.Server ConnContext that remembers the handoff.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if hc, ok := c.(*Conn); ok {
		return context.WithValue(ctx, ctxKey{}, hc)
	}
	return ctx
}

// ConnState is the http.Server ConnState of the server of handed-off
// connections: a connection that goes idle has sent its whole response and
// read its whole request, and goes back to envd-init.
func ConnState(c net.Conn, st http.ConnState) {
	if hc, ok := c.(*Conn); ok && st == http.StateIdle {
		hc.giveBack()
	}
}

// Serve wraps the handler of handed-off connections: envd-init's response
// headers are added.
func Serve(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hc, ok := r.Context().Value(ctxKey{}).(*Conn); ok {
			for k, v := range hc.Extra {
				w.Header()[k] = v
			}
		}
		next.ServeHTTP(w, r)
	})
}

// OfferHeader, on a request envd-init proxies to a plugin, says that a
// response too big to be worth copying through envd-init may be declined
// with OfferStatus and OfferHeader set: envd-init then hands the client's
// connection over for the request instead. Small answers are cheaper
// proxied (one HTTP exchange on a kept Unix connection) than handed over
// (four handoff messages, an fd passed each way).
const OfferHeader = "Envd-Handoff-Offer"

// OfferStatus is the status of a declined offer.
const OfferStatus = http.StatusMisdirectedRequest

// OfferLimit is the largest body a plugin answers through the proxy.
const OfferLimit = 64 << 10

var errDeclined = errors.New("handoff: answered by handoff instead")

// Offer wraps a plugin's proxied HTTP handler: a GET that carries
// OfferHeader and would answer 200/206 with a body of unknown length or
// above OfferLimit is declined, so that envd-init hands the connection over.
// An offered POST is declined only by its handler (DeclineOffer).
//
// A small upload carrying OfferHeader (a body of known length up to
// OfferLimit, sent with Expect: 100-continue) is read whole before the
// handler sees it: reading it sends the 100 Continue that envd-init waits
// for before it sends the body, and envd-init sends none once it has told
// the client that the plugin did not take the request (AckTimeout). A body
// that does not arrive whole is such a revoked request: it is dropped
// without an answer and has no effect.
func Offer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		offered := r.Header.Get(OfferHeader) != ""
		r.Header.Del(OfferHeader)
		switch {
		case offered && r.Method == http.MethodGet:
			o := &offerWriter{ResponseWriter: w}
			next.ServeHTTP(o, r.WithContext(context.WithValue(r.Context(), offerKey{}, o)))
		case offered && r.Method == http.MethodPost && r.ContentLength > 0 && r.ContentLength <= OfferLimit:
			body := make([]byte, r.ContentLength)
			if _, err := io.ReadFull(r.Body, body); err != nil {
				panic(http.ErrAbortHandler)
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			// The handler may still decline (DeclineOffer) when it finds,
			// cheaply, that its answer would be big (a long listing).
			o := &offerWriter{ResponseWriter: w, anySize: true}
			next.ServeHTTP(o, r.WithContext(context.WithValue(r.Context(), offerKey{}, o)))
		default:
			next.ServeHTTP(w, r)
		}
	})
}

type offerWriter struct {
	http.ResponseWriter
	// anySize: an answer of any size is kept (a small upload's); only
	// DeclineOffer declines.
	anySize bool
	// decline: the handler declined before answering (DeclineOffer).
	decline           bool
	decided, declined bool
}

type offerKey struct{}

// DeclineOffer, called by the handler of a request that envd-init offered
// through the proxy before it writes anything, declines the offer: the
// answer it then writes is replaced by the decline, and envd-init hands the
// client's connection over for the request, which is served again from the
// start. A handler calls it when it finds, before the expensive part of its
// work, that its answer would be too big to be worth copying through
// envd-init. It reports false when the request was not offered (or its
// answer has begun): the handler must answer it itself.
func DeclineOffer(ctx context.Context) bool {
	o, ok := ctx.Value(offerKey{}).(*offerWriter)
	if !ok || o.decided {
		return false
	}
	o.decline = true
	return true
}

// Offered reports whether the request of ctx was offered through the proxy
// and its answer has not begun.
func Offered(ctx context.Context) bool {
	o, ok := ctx.Value(offerKey{}).(*offerWriter)
	return ok && !o.decided
}

func (o *offerWriter) WriteHeader(code int) {
	if o.decided {
		return
	}
	o.decided = true
	big := false
	if !o.anySize && (code == http.StatusOK || code == http.StatusPartialContent) {
		n, err := strconv.ParseInt(o.Header().Get("Content-Length"), 10, 64)
		big = err != nil || n > OfferLimit
	}
	if o.decline || big {
		o.declined = true
		h := o.ResponseWriter.Header()
		clear(h)
		h.Set(OfferHeader, "declined")
		h.Set("Content-Length", "0")
		o.ResponseWriter.WriteHeader(OfferStatus)
		return
	}
	o.ResponseWriter.WriteHeader(code)
}

func (o *offerWriter) Write(b []byte) (int, error) {
	if !o.decided {
		o.WriteHeader(http.StatusOK)
	}
	if o.declined {
		return 0, errDeclined
	}
	return o.ResponseWriter.Write(b)
}

// Flush implements http.Flusher (before a decision, it decides).
func (o *offerWriter) Flush() {
	if !o.decided {
		o.WriteHeader(http.StatusOK)
	}
	if !o.declined {
		_ = http.NewResponseController(o.ResponseWriter).Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (o *offerWriter) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// Declined reports whether a proxied response declined the offer.
func Declined(res *http.Response) bool {
	return res.StatusCode == OfferStatus && res.Header.Get(OfferHeader) == "declined"
}

package frontdoor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envd-project/envd/internal/resterr"
	"github.com/envd-project/envd/plugins/pluginkit/handoff"
	"go.uber.org/zap"
)

// handoffRoute gives a request to a plugin by handing it the client's TCP
// connection itself: not a byte of the exchange crosses envd-init (sendfile
// for downloads). The plugin gives the connection back after its response
// (with any bytes it read beyond the request) and back serves the client's
// next request: the connection stays alive. Anything that cannot be handed
// over (h2c, a plugin that is down) goes to next, the proxy.
type handoffRoute struct {
	log    *zap.Logger
	plugin string
	next   http.Handler
	// sock is the plugin's handoff socket if the plugin is up now.
	sock func() (string, error)
	// back serves a connection the plugin gave back.
	back func(net.Conn)
	// offer: downloads go through next first, offering the plugin to
	// decline a big answer (handoff.Offer).
	offer bool
	// offerVia, when set, is the plugin's HTTP proxy through which a call
	// with a small body is offered first (handoff.DeclineOffer); next is
	// then the route for what cannot be handed over.
	offerVia http.Handler
}

func (h *handoffRoute) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path, ok := h.canHandOff(r)
	if !ok {
		h.next.ServeHTTP(w, r)
		return
	}
	if h.offer && r.Method == http.MethodGet && r.ContentLength == 0 && len(r.TransferEncoding) == 0 {
		// A download goes through the proxy first: a small answer costs
		// less copied than handed over; a big one is declined by the
		// plugin and then handed over (it has no side effect to repeat).
		// Only without a body: the proxy would consume it, and a handoff
		// after a decline would then frame bytes that are no longer there.
		r = r.WithContext(context.WithValue(r.Context(), offerKey{}, offer(func(w http.ResponseWriter, _ *http.Request) bool {
			return h.handOff(w, r, path, nil)
		})))
		h.next.ServeHTTP(w, r)
		return
	}
	if h.offer && r.Method == http.MethodPost && r.ContentLength > 0 && r.ContentLength <= handoff.OfferLimit && len(r.TransferEncoding) == 0 {
		h.gated(h.next, w, r, false)
		return
	}
	// A client's own Expect would be answered twice (here, when the body
	// is read, and by the plugin after a decline): such a call is handed
	// over at once.
	if h.offerVia != nil && r.ContentLength > 0 && r.ContentLength <= offerCallBody && len(r.TransferEncoding) == 0 && r.Header.Get("Expect") == "" {
		h.offerCall(w, r, path)
		return
	}
	if h.handOff(w, r, path, nil) {
		return
	}
	h.next.ServeHTTP(w, r)
}

// offerCall offers a call with a small body and no side effect (a
// ListDir) to the plugin through offerVia. Head and body go out together
// (an upload's 100-continue round trip cost 1.25x the CPU per call): a
// plugin whose answer has not begun within AckTimeout (stopped) gets the
// client the handoff's 503, and one that runs the call late changes
// nothing. The body is read here first, so that a call the plugin declines
// is handed over whole; the plugin declines before its expensive work.
func (h *handoffRoute) offerCall(w http.ResponseWriter, r *http.Request, path string) {
	body := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, body); err != nil {
		// The client went away mid-request: there is no one to answer.
		panic(http.ErrAbortHandler)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	// The plugin went down in between: the route for calls that cannot be
	// handed over (which waits for it) answers; the call has no effect
	// that running it again could repeat.
	otherwise := func(w http.ResponseWriter, _ *http.Request) {
		r.Body = io.NopCloser(bytes.NewReader(body))
		h.next.ServeHTTP(w, r)
	}
	ctx := context.WithValue(r.Context(), offerKey{}, offer(func(w http.ResponseWriter, _ *http.Request) bool {
		// The proxy cleared the headers set before the plugin's 100
		// Continue (CORS): they go with the connection.
		if nc, ok := w.(*noContinue); ok {
			nc.restore()
		}
		if !h.handOff(w, r, path, body) {
			otherwise(w, r)
		}
		return true
	}))
	ctx = context.WithValue(ctx, otherwiseKey{}, http.HandlerFunc(otherwise))
	h.gated(h.offerVia, w, r.WithContext(ctx), true)
}

// offerCallBody bounds the body of a call offered through the proxy: with
// its head it must fit one handoff message when the call is declined.
const offerCallBody = handoff.MaxMessage / 4

// otherwiseKey holds the handler of an offered call that the proxy could
// not deliver (the plugin died).
type otherwiseKey struct{}

// gated passes a small upload of known length through the proxy
// (one HTTP exchange on a kept Unix connection costs less than a handoff's
// four messages and two passed fds) with the handoff's promise kept: the
// plugin acts on nothing that envd-init has already answered for it. The
// request goes out with Expect: 100-continue and its body is sent only
// after the plugin's 100 Continue, unless AckTimeout passed first: then
// the client gets the handoff's 503 and the plugin never gets the body
// (handoff.Offer drops a request whose body does not arrive whole).
func (h *handoffRoute) gated(proxy http.Handler, w http.ResponseWriter, r *http.Request, onAnswer bool) {
	g := &uploadGate{onAnswer: onAnswer}
	ctx, cancel := context.WithCancel(context.WithValue(r.Context(), gateKey{}, g))
	defer cancel()
	t := time.AfterFunc(handoff.AckTimeout, func() {
		if g.state.CompareAndSwap(gatePending, gateRevoked) {
			cancel()
		}
	})
	defer t.Stop()
	proxy.ServeHTTP(&noContinue{ResponseWriter: w}, r.WithContext(ctx))
}

// uploadGate decides once between sending an upload's body to the plugin
// (its 100 Continue came) and answering the client without it.
type uploadGate struct {
	state atomic.Int32
	// onAnswer: the gate opens when the plugin's answer begins, and the
	// body goes out with the head (a call with no effect, which a plugin
	// that runs it late cannot harm).
	onAnswer bool
}

const (
	gatePending int32 = iota
	gateSent
	gateRevoked
)

type gateKey struct{}

// notTaken is the 503's message for a request the plugin did not take in
// time, whether handed over or passed through the gate.
func notTaken(plugin string) string {
	return fmt.Sprintf("plugin %s is unavailable: it did not take the request within %s", plugin, handoff.AckTimeout)
}

// revokedUpload reports whether r's upload was answered for the plugin.
func revokedUpload(r *http.Request) bool {
	g, ok := r.Context().Value(gateKey{}).(*uploadGate)
	return ok && g.state.Load() == gateRevoked
}

// gatedBody is the body of a gated upload: the proxy's transport reads it
// only after the plugin's 100 Continue.
type gatedBody struct {
	io.ReadCloser
	g *uploadGate
}

var errRevoked = errors.New("upload answered without the plugin")

func (b gatedBody) Read(p []byte) (int, error) {
	if !b.g.state.CompareAndSwap(gatePending, gateSent) && b.g.state.Load() != gateSent {
		return 0, errRevoked
	}
	return b.ReadCloser.Read(p)
}

// noContinue keeps the plugin's 100 Continue, which answered envd-init's
// own Expect, from the client (the proxy forwards 1xx answers). A client
// that asked for one itself gets it from the front door's server when its
// body is first read. The proxy clears the header map after a 1xx it
// forwarded; the headers set before it (CORS) are put back in front of the
// final answer's, as they would have been without the 1xx.
type noContinue struct {
	http.ResponseWriter
	saved http.Header
}

func (w *noContinue) WriteHeader(code int) {
	if code == http.StatusContinue {
		w.saved = w.Header().Clone()
		return
	}
	w.restore()
	w.ResponseWriter.WriteHeader(code)
}

func (w *noContinue) Write(b []byte) (int, error) {
	w.restore()
	return w.ResponseWriter.Write(b)
}

func (w *noContinue) restore() {
	if w.saved == nil {
		return
	}
	h := w.Header()
	for k, v := range w.saved {
		h[k] = append(v, h[k]...)
	}
	w.saved = nil
}

func (w *noContinue) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// canHandOff returns the plugin's handoff socket if r can be handed over.
func (h *handoffRoute) canHandOff(r *http.Request) (string, bool) {
	if r.ProtoMajor != 1 {
		return "", false
	}
	if _, tcp := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); !tcp {
		return "", false
	}
	// A plugin that is down is the proxy's to wait for (and report),
	// within the one bound a call gets.
	path, err := h.sock()
	return path, err == nil
}

// offer hands the request over when the plugin declined to answer it
// through the proxy; false: it could not, nothing was written. It serves
// the client's request as it came, never the proxy's copy it is called
// with (which carries the proxy's Host, offer header and Expect).
type offer func(w http.ResponseWriter, r *http.Request) bool

type offerKey struct{}

// handOff reports whether it took care of the request. body is the
// request's body when it was already read from the connection.
func (h *handoffRoute) handOff(w http.ResponseWriter, r *http.Request, path string, body []byte) bool {
	head := handoff.RequestHead(r)
	if len(head)+len(body) > handoff.MaxMessage/2 {
		return false
	}
	// Reach the plugin before taking the connection: a plugin that just
	// died is the proxy's to report (and wait for).
	ctx, cancel := context.WithTimeout(r.Context(), handoff.AckTimeout)
	sender, err := handoff.Dial(ctx, path)
	cancel()
	if err != nil {
		return false
	}
	defer sender.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	// From here on the connection is ours alone: answer on it directly.
	tcp, unread := underlying(conn)
	if tcp == nil {
		h.fail(conn, "request could not be passed on: connection is not TCP")
		_ = conn.Close()
		return true
	}
	buffered, _ := brw.Reader.Peek(brw.Reader.Buffered())
	request := append(append(append(head, body...), buffered...), unread...)
	msg, err := handoff.Encode(w.Header(), handoff.FramingOf(r, len(head)), request)
	if err == nil {
		err = sender.Send(tcp, msg)
	}
	if err != nil {
		// The plugin never acts on a handoff that was not confirmed:
		// answer here, and end the connection (the request's body, if
		// any, is unread).
		h.log.Warn("connection handoff failed", zap.String("path", r.URL.Path), zap.Error(err))
		msg := "request could not be passed on"
		if errors.Is(err, handoff.ErrUnacknowledged) {
			msg = notTaken(h.plugin)
		}
		h.fail(tcp, msg)
		_ = tcp.CloseWrite()
		_ = tcp.Close()
		return true
	}
	leftover, keep := sender.Wait()
	if !keep {
		_ = tcp.Close()
		return true
	}
	h.back(&returnedConn{TCPConn: tcp, prefix: leftover})
	return true
}

// underlying finds the TCP socket of a hijacked connection and the bytes
// of it already read but not yet passed on.
func underlying(c net.Conn) (*net.TCPConn, []byte) {
	switch c := c.(type) {
	case *net.TCPConn:
		return c, nil
	case *returnedConn:
		return c.TCPConn, c.prefix
	}
	return nil, nil
}

// fail answers a request whose connection was taken but not handed over.
func (h *handoffRoute) fail(conn net.Conn, msg string) {
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = conn.Write(resterr.Response(http.StatusServiceUnavailable, msg))
}

// returnedConn is a client connection a plugin gave back, with the bytes
// it read beyond its request.
type returnedConn struct {
	*net.TCPConn
	prefix []byte
}

func (c *returnedConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.TCPConn.Read(p)
}

// backListener yields the connections plugins gave back, to an
// http.Server of their own.
type backListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	addr  net.Addr
}

func newBackListener(addr net.Addr) *backListener {
	return &backListener{conns: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

// put serves c, or closes it once the front door is shut.
func (l *backListener) put(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		_ = c.Close()
	}
}

func (l *backListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *backListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *backListener) Addr() net.Addr { return l.addr }

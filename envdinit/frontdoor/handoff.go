package frontdoor

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/envd-project/envd/internal/resterr"
	"github.com/envd-project/envd/plugins/pluginkit/handoff"
	"go.uber.org/zap"
)

// handoffRoute gives a request to a plugin by handing it the client's TCP
// connection itself: the plugin serves the request and closes the
// connection, and not a byte of the exchange crosses envd-init (sendfile
// for downloads). Anything that cannot be handed over (h2c, a plugin that
// is down) goes to next, the proxy.
type handoffRoute struct {
	log  *zap.Logger
	next http.Handler
	// sock is the plugin's handoff socket if the plugin is up now.
	sock func() (string, error)
}

func (h *handoffRoute) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.handOff(w, r) {
		return
	}
	h.next.ServeHTTP(w, r)
}

// handOff reports whether it took care of the request.
func (h *handoffRoute) handOff(w http.ResponseWriter, r *http.Request) bool {
	if r.ProtoMajor != 1 {
		return false
	}
	if _, tcp := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); !tcp {
		return false
	}
	// A plugin that is down is the proxy's to wait for (and report),
	// within the one bound a call gets.
	path, err := h.sock()
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	head := handoff.RequestHead(r)
	if len(head) > handoff.MaxMessage/2 {
		return false
	}
	// Reach the plugin before taking the connection: a plugin that just
	// died is the proxy's to report (and wait for).
	sender, err := handoff.Dial(ctx, path)
	if err != nil {
		return false
	}
	defer sender.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	// From here on the connection is ours alone: answer on it directly.
	defer conn.Close()
	tcp, ok := conn.(*net.TCPConn)
	if !ok {
		h.fail(conn, "connection is not TCP")
		return true
	}
	buffered, _ := brw.Reader.Peek(brw.Reader.Buffered())
	msg, err := handoff.Encode(w.Header(), append(head, buffered...))
	if err == nil {
		err = sender.Send(tcp, msg)
	}
	if errors.Is(err, handoff.ErrUnacknowledged) {
		// The plugin may hold the connection now: answering here could
		// make a second response. End the socket itself, for both holders.
		h.log.Warn("connection handoff not acknowledged", zap.String("path", r.URL.Path), zap.Error(err))
		_ = tcp.CloseRead()
		_ = tcp.CloseWrite()
		return true
	}
	if err != nil {
		h.log.Warn("connection handoff failed", zap.String("path", r.URL.Path), zap.Error(err))
		h.fail(conn, err.Error())
	}
	return true
}

// fail answers a request whose connection was taken but not handed over.
func (h *handoffRoute) fail(conn net.Conn, msg string) {
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = conn.Write(resterr.Response(http.StatusServiceUnavailable, "request could not be passed on: "+msg))
}

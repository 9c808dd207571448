package frontdoor

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/envd-project/envd/plugins/handoff"
	"go.uber.org/zap"
)

// filesRoute gives a /files request to envd-fs. An HTTP/1 request on TCP
// hands envd-fs the client's connection itself, so the file's bytes move
// between the socket and the disk in envd-fs alone (sendfile for
// downloads). Anything else (h2c, a handoff that cannot be made) goes
// through the reverse proxy.
type filesRoute struct {
	log   *zap.Logger
	proxy http.Handler
	sock  func(ctx context.Context) (string, error)
}

func (f *filesRoute) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.handOff(w, r) {
		return
	}
	f.proxy.ServeHTTP(w, r)
}

// handOff reports whether it took care of the request.
func (f *filesRoute) handOff(w http.ResponseWriter, r *http.Request) bool {
	if r.ProtoMajor != 1 {
		return false
	}
	if _, tcp := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); !tcp {
		return false
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	path, err := f.sock(ctx)
	if err != nil {
		return false // the proxy answers (and waits for envd-fs) the same way
	}
	head := handoff.RequestHead(r)
	if len(head) > handoff.MaxMessage/2 {
		return false
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	// From here on the connection is ours alone: answer on it directly.
	defer conn.Close()
	tcp, ok := conn.(*net.TCPConn)
	if !ok {
		f.fail(conn, "connection is not TCP")
		return true
	}
	buffered, _ := brw.Reader.Peek(brw.Reader.Buffered())
	msg, err := handoff.Encode(w.Header(), append(head, buffered...))
	if err == nil {
		err = handoff.Send(ctx, path, tcp, msg)
	}
	if err != nil {
		f.log.Warn("files handoff failed", zap.Error(err))
		f.fail(conn, err.Error())
	}
	return true
}

// fail answers a request whose connection was taken but not handed over.
func (f *filesRoute) fail(conn net.Conn, msg string) {
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	body := `{"code":503,"message":"file transfer unavailable: ` + jsonEscape(msg) + `"}` + "\n"
	_, _ = conn.Write([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: " +
		itoa(len(body)) + "\r\n\r\n" + body))
}

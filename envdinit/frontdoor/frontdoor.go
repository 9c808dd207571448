// Package frontdoor is envd-init's listener and runs in envd-init: one port
// serving HTTP/1.1 and h2c, CORS, the access-token gate, caller identity, the
// host endpoints, and the proxy that passes every Connect, gRPC and gRPC-Web
// call to the plugin that owns it. /files and ListDir over HTTP/1 are handed
// to envd-fs with the client's connection itself, so their bytes never cross
// envd-init; small downloads and uploads, h2c requests, and requests while
// envd-fs is down go through a reverse proxy over envd-fs's Unix socket
// (docs/architecture.md).
package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	connectcors "connectrpc.com/cors"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/internal/memtrim"
	"github.com/envd-project/envd/internal/resterr"
	"github.com/envd-project/envd/plugins/pluginkit/connectadapter"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/plugins/pluginkit/grpcadapter"
	"github.com/envd-project/envd/plugins/pluginkit/handoff"
	"github.com/rs/cors"
	"go.uber.org/zap"
)

// Host is the host-integration surface (package hostapi).
type Host interface {
	Register(mux *http.ServeMux)
	TokenGate(next http.Handler) http.Handler
	FilesAuth(next http.Handler) http.Handler
}

// Options configure the front door.
type Options struct {
	Log    *zap.Logger
	Conn   func(name string) grpcadapter.ConnFunc
	Socket func(ctx context.Context, name string) (string, error)
	// Handoff returns the socket for whole client connections of a plugin
	// that is up now; it never waits.
	Handoff func(name string) (string, error)
	// Streams counts the process streams held open, for their re-attachment
	// to a restarted envd-proc (may be nil).
	Streams grpcadapter.StreamRegistry
	Host    Host
	Users   connectadapter.UserDB
}

// Server is the front door.
type Server struct {
	log  *zap.Logger
	trim *memtrim.Trimmer
	http *http.Server
	// back serves the client connections plugins gave back after a
	// handed-off request.
	back   *http.Server
	backLn *backListener
	mu     sync.Mutex
	conns  map[net.Conn]http.ConnState
}

// IdleTimeout is the keep-alive idle timeout of the references (WIRE.md §1).
const IdleTimeout = 640 * time.Second

// New builds the front door's handler chain.
func New(opts Options) *Server {
	s := &Server{log: opts.Log, conns: map[net.Conn]http.ConnState{}, trim: memtrim.New(trimIdle),
		backLn: newBackListener(&net.TCPAddr{})}
	mux := http.NewServeMux()
	handlerOpts := connectadapter.HandlerOptions(opts.Users)
	mux.Handle(connectadapter.NewProcessHandler(&grpcadapter.ProcessClient{Plugin: contract.Proc, Conn: opts.Conn(contract.Proc), Streams: opts.Streams}, handlerOpts...))
	fsPath, fsProxy := connectadapter.NewFilesystemHandler(&grpcadapter.FilesystemClient{Plugin: contract.FS, Conn: opts.Conn(contract.FS)}, handlerOpts...)
	mux.Handle(fsPath, fsProxy)
	// A file's bytes and a ListDir answer (which then is not re-encoded
	// across the hop: ~17 ms of a 10,000-entry listing) are served by
	// envd-fs on the client's own connection, which comes back after the
	// response; short calls and RPC streams are cheaper through the hop.
	fsSock := func() (string, error) { return opts.Handoff(contract.FS) }
	filesProxy := newFilesProxy(opts.Log, func(ctx context.Context) (string, error) { return opts.Socket(ctx, contract.FS) })
	// A ListDir is offered through the files proxy first: envd-fs answers
	// a short listing there (one HTTP exchange on a kept Unix connection
	// costs less than a handoff) and declines a long one, which is then
	// handed over.
	mux.Handle("POST "+fsPath+"ListDir", &handoffRoute{log: opts.Log, plugin: contract.FS, next: fsProxy, sock: fsSock, back: s.backLn.put, offerVia: filesProxy})
	files := &handoffRoute{log: opts.Log, plugin: contract.FS, next: filesProxy, sock: fsSock, back: s.backLn.put, offer: true}
	mux.Handle("GET /files", opts.Host.FilesAuth(files))
	mux.Handle("POST /files", opts.Host.FilesAuth(files))
	mux.Handle("POST /files/compose", files)
	opts.Host.Register(mux)

	var h http.Handler = mux
	h = restIdentity(opts.Users, h)
	h = s.trim.Middleware(h)
	h = opts.Host.TokenGate(h)
	h = newCORS().Handler(h)

	s.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          zap.NewStdLog(opts.Log.Named("http")),
		ConnState:         s.track,
	}
	s.http.Protocols = new(http.Protocols)
	s.http.Protocols.SetHTTP1(true)
	s.http.Protocols.SetUnencryptedHTTP2(true)
	// A connection given back is in the middle of HTTP/1.1 keep-alive.
	s.back = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          s.http.ErrorLog,
		ConnState:         s.track,
	}
	s.back.Protocols = new(http.Protocols)
	s.back.Protocols.SetHTTP1(true)
	return s
}

func newCORS() *cors.Cors {
	return cors.New(cors.Options{
		AllowedOrigins: []string{"*"},
		AllowedMethods: []string{http.MethodHead, http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete},
		AllowedHeaders: []string{"*"},
		ExposedHeaders: append(connectcors.ExposedHeaders(), "Location", "Cache-Control", "X-Content-Type-Options"),
		MaxAge:         7200,
	})
}

func isRPC(path string) bool {
	return strings.HasPrefix(path, "/"+processconnect.ProcessName+"/") ||
		strings.HasPrefix(path, "/"+filesystemconnect.FilesystemName+"/")
}

// restIdentity rejects an unknown Basic user on REST paths the way the
// reference's authn middleware does (RPCs get it from the interceptor, in
// their own protocol).
func restIdentity(db connectadapter.UserDB, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isRPC(r.URL.Path) {
			if _, err := connectadapter.BasicUser(db, r.Header); err != nil {
				var ce *connect.Error
				if errors.As(err, &ce) {
					writeConnectError(w, ce)
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) track(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st {
	case http.StateClosed, http.StateHijacked:
		delete(s.conns, c)
	default:
		s.conns[c] = st
	}
}

// CloseIdle closes keep-alive connections that carry no request, so that
// none survives a VM snapshot half-open.
func (s *Server) CloseIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c, st := range s.conns {
		// A new connection may carry a request not read yet: leave it.
		if st == http.StateIdle {
			_ = c.Close()
		}
	}
}

// trimIdle is how long envd-init must go without a request before its free
// heap is returned to the OS.
const trimIdle = 3 * time.Second

// Touch counts work done without a request (a plugin restarted) as
// activity for envd-init's idle trim, so what it touched is trimmed after.
func (s *Server) Touch() { s.trim.Touch() }

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.trim.Run(ctx)
	s.backLn.addr = ln.Addr()
	go func() { _ = s.back.Serve(s.backLn) }()
	err := s.http.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, and closes every connection after ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	s.backLn.Close()
	backErr := make(chan error, 1)
	go func() { backErr <- s.back.Shutdown(ctx) }()
	err := s.http.Shutdown(ctx)
	if err != nil {
		_ = s.http.Close()
	}
	if berr := <-backErr; berr != nil {
		_ = s.back.Close()
		err = errors.Join(err, berr)
	}
	return err
}

// Handler exposes the handler chain (tests).
func (s *Server) Handler() http.Handler { return s.http.Handler }

// newFilesProxy forwards /files to envd-fs over its Unix socket.
func newFilesProxy(log *zap.Logger, socket func(ctx context.Context) (string, error)) http.Handler {
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			path, err := socket(ctx)
			if err != nil {
				return nil, err
			}
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// HTTP/1 downloads come this way only when small (a big one is
		// declined and handed over), h2c transfers always: 64 KiB buffers
		// keep syscalls per MiB low without 512 KiB per pooled connection.
		WriteBufferSize:    proxyBuffer,
		ReadBufferSize:     proxyBuffer,
		DisableCompression: true,
		// A gated upload's body waits for the plugin's 100 Continue; the
		// gate, not the transport, decides when to stop waiting
		// (handoff.AckTimeout), so this only has to be longer.
		ExpectContinueTimeout: 2 * handoff.AckTimeout,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = contract.FS
			pr.Out.Host = contract.FS
			pr.Out.Header.Del(handoff.OfferHeader)
			if _, ok := pr.In.Context().Value(offerKey{}).(offer); ok {
				pr.Out.Header.Set(handoff.OfferHeader, "1")
			}
			if g, ok := pr.In.Context().Value(gateKey{}).(*uploadGate); ok && g.onAnswer {
				pr.Out.Header.Set(handoff.OfferHeader, "1")
			} else if ok && pr.Out.Body != nil {
				pr.Out.Header.Set(handoff.OfferHeader, "1")
				pr.Out.Header.Set("Expect", "100-continue")
				pr.Out.Body = gatedBody{ReadCloser: pr.Out.Body, g: g}
			}
		},
		ModifyResponse: func(res *http.Response) error {
			if g, ok := res.Request.Context().Value(gateKey{}).(*uploadGate); ok && g.onAnswer &&
				!g.state.CompareAndSwap(gatePending, gateSent) {
				return errRevoked
			}
			if _, ok := res.Request.Context().Value(offerKey{}).(offer); ok && handoff.Declined(res) {
				return errDeclined
			}
			return nil
		},
		Transport:  transport,
		BufferPool: bufferPool{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if revokedUpload(r) {
				resterr.Write(w, http.StatusServiceUnavailable, notTaken(contract.FS))
				return
			}
			if errors.Is(err, errDeclined) {
				if !r.Context().Value(offerKey{}).(offer)(w, r) {
					resterr.Write(w, http.StatusServiceUnavailable, "file transfer failed: plugin envd-fs did not take the connection")
				}
				return
			}
			if other, ok := r.Context().Value(otherwiseKey{}).(http.Handler); ok && !errors.Is(err, context.Canceled) {
				if nc, ok := w.(*noContinue); ok {
					nc.restore()
				}
				other.ServeHTTP(w, r)
				return
			}
			status, msg := http.StatusBadGateway, fmt.Sprintf("file transfer failed: %v", err)
			var ce *connect.Error
			if errors.As(err, &ce) {
				status, msg = http.StatusServiceUnavailable, ce.Message()
			}
			if !errors.Is(err, context.Canceled) {
				log.Warn("files proxy", zap.String("path", r.URL.Path), zap.Error(err))
			}
			resterr.Write(w, status, msg)
		},
	}
}

// errDeclined: the plugin declined to answer through the proxy.
var errDeclined = errors.New("answer declined through the proxy")

const proxyBuffer = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, proxyBuffer); return &b }}

type bufferPool struct{}

func (bufferPool) Get() []byte  { return *(bufPool.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { bufPool.Put(&b) }

// Package callinfo carries the per-call identity and options that envd-init
// resolves at the front door (the caller's user, the keepalive interval)
// through the context, and across the gRPC hop to a plugin as metadata. It
// runs in envd-init (which writes it), envd-proc and envd-fs (which read it).
package callinfo

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/grpc/metadata"
)

// DefaultKeepalive applies when Keepalive-Ping-Interval is missing, garbage
// or not positive (WIRE.md §4.3, §12.10).
const DefaultKeepalive = 90 * time.Second

// KeepaliveHeader is the request header (integer seconds) clients send on streams.
const KeepaliveHeader = "Keepalive-Ping-Interval"

const (
	// A -bin key: grpc-go base64-encodes it, so any name passwd allows
	// (UTF-8 included) crosses; an ASCII-only key would fail the call.
	mdUser      = "envd-user-bin"
	mdKeepalive = "envd-keepalive-ms"
	mdReattach  = "envd-reattach"
)

// Info is what a service implementation learns about its caller.
type Info struct {
	// User is the user named by Basic auth, already checked to exist; empty
	// means the sandbox's default user.
	User string
	// Keepalive is the idle time after which a stream sends a keepalive event.
	Keepalive time.Duration
	// Reattach marks a Connect that envd-init makes to carry on a client
	// stream the previous envd-proc was serving (never set by a client).
	Reattach bool
}

type ctxKey struct{}

// With returns ctx carrying info.
func With(ctx context.Context, info Info) context.Context {
	return context.WithValue(ctx, ctxKey{}, info)
}

// From returns the call's info; a context without one gets the defaults.
func From(ctx context.Context) Info {
	if info, ok := ctx.Value(ctxKey{}).(Info); ok {
		if info.Keepalive <= 0 {
			info.Keepalive = DefaultKeepalive
		}
		return info
	}
	return Info{Keepalive: DefaultKeepalive}
}

// ParseKeepalive reads the Keepalive-Ping-Interval header value (seconds).
func ParseKeepalive(h http.Header) time.Duration {
	s := h.Get(KeepaliveHeader)
	if s == "" {
		return DefaultKeepalive
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return DefaultKeepalive
	}
	// Bound it so a huge value cannot overflow the duration.
	if n > 24*3600 {
		n = 24 * 3600
	}
	return time.Duration(n) * time.Second
}

// WithHeaderKeepalive sets Info.Keepalive from the request headers.
func WithHeaderKeepalive(ctx context.Context, h http.Header) context.Context {
	info := From(ctx)
	info.Keepalive = ParseKeepalive(h)
	return With(ctx, info)
}

// ToOutgoing copies the call's info into outgoing gRPC metadata.
func ToOutgoing(ctx context.Context) context.Context {
	info := From(ctx)
	kv := []string{mdUser, info.User, mdKeepalive, strconv.FormatInt(info.Keepalive.Milliseconds(), 10)}
	if info.Reattach {
		kv = append(kv, mdReattach, "1")
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// FromIncoming restores the call's info from incoming gRPC metadata.
func FromIncoming(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	info := Info{Keepalive: DefaultKeepalive}
	if v := md.Get(mdUser); len(v) > 0 {
		info.User = v[0]
	}
	if v := md.Get(mdKeepalive); len(v) > 0 {
		if ms, err := strconv.ParseInt(v[0], 10, 64); err == nil && ms > 0 {
			info.Keepalive = time.Duration(ms) * time.Millisecond
		}
	}
	info.Reattach = len(md.Get(mdReattach)) > 0
	return With(ctx, info)
}

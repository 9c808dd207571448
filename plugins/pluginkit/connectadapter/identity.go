package connectadapter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"connectrpc.com/connect"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
)

var errEOF = io.EOF

// compressMinBytes keeps the small events of a stream (start, end,
// keepalive, a line of output) out of gzip: a gzip writer's reset alone
// costs more than sending them. Clients that advertise gzip accept
// identity too; large messages (a ListDir, a burst of output) are still
// compressed.
const compressMinBytes = 1024

// HandlerOptions are the Connect handler options of every surface that
// serves the public services (envd-init's front door, a standalone plugin).
func HandlerOptions(db UserDB) []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithInterceptors(BoundErrors(), Identity(db)),
		connect.WithCompressMinBytes(compressMinBytes),
		// envd-init would buffer (and gunzip) a message of any size; nothing
		// larger crosses the hop to a plugin anyway.
		connect.WithReadMaxBytes(contract.MaxMessageSize),
	}
}

// UserDB is what the identity check needs of the user database.
type UserDB interface {
	Lookup(name string) (*users.User, error)
}

// Identity resolves the caller's user from Basic auth (WIRE.md §4.2: the
// user name with an empty password; no credentials → the default user) and
// the Keepalive-Ping-Interval header into callinfo, rejecting an unknown user
// with unauthenticated in the caller's own protocol.
func Identity(db UserDB) connect.Interceptor { return identity{db} }

type identity struct{ db UserDB }

func (i identity) resolve(ctx context.Context, h http.Header) (context.Context, error) {
	info := callinfo.Info{Keepalive: callinfo.ParseKeepalive(h)}
	name, err := BasicUser(i.db, h)
	if err != nil {
		return nil, err
	}
	info.User = name
	return callinfo.With(ctx, info), nil
}

// BasicUser returns the user named by Basic credentials in h ("" when there
// are none) or an unauthenticated *connect.Error for an unknown user.
func BasicUser(db UserDB, h http.Header) (string, error) {
	r := http.Request{Header: h}
	name, _, ok := r.BasicAuth()
	if !ok {
		return "", nil
	}
	if _, err := db.Lookup(name); err != nil {
		if errors.Is(err, users.ErrUnknownUser) {
			return "", connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid username: '%s'", name))
		}
		return "", connect.NewError(connect.CodeInternal, fmt.Errorf("looking up user '%s': %w", name, err))
	}
	return name, nil
}

func (i identity) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, err := i.resolve(ctx, req.Header())
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (i identity) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i identity) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := i.resolve(ctx, conn.RequestHeader())
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

package hostapi

import (
	"bytes"
	"context"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/envd-project/envd/envdinit/clock"
	"github.com/envd-project/envd/envdinit/state"
)

// maxInitBody bounds /init bodies; a CA bundle is the largest field.
const maxInitBody = 8 << 20

var (
	errTokenMismatch    = errors.New("access token validation failed")
	errTokenResetDenied = errors.New("access token reset not authorized")
	errTokenEmpty       = errors.New("invalid access token: empty token not allowed")
	errTokenEscape      = errors.New("invalid access token: unexpected escape sequence")
	errTokenNotString   = errors.New("invalid access token: not a JSON string")
	errBodyTooLarge     = fmt.Errorf("request body larger than %d bytes", maxInitBody)
)

// secureToken is the accessToken field: a non-empty JSON string without
// escapes (tokens are hex), as E2B's decoder requires (§4.1, §7.4).
type secureToken string

func (t *secureToken) UnmarshalJSON(b []byte) error {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return errTokenNotString
	}
	inner := b[1 : len(b)-1]
	if bytes.IndexByte(inner, '\\') >= 0 {
		return errTokenEscape
	}
	if len(inner) == 0 {
		return errTokenEmpty
	}
	*t = secureToken(inner)
	return nil
}

type volumeMount struct {
	NFSTarget string `json:"nfs_target"`
	Path      string `json:"path"`
}

// initBody is the /init request of §7.4. Keys match case-insensitively
// (encoding/json), unknown keys are ignored, every field is optional.
type initBody struct {
	AccessToken    *secureToken      `json:"accessToken"`
	EnvVars        map[string]string `json:"envVars"`
	DefaultUser    *string           `json:"defaultUser"`
	DefaultWorkdir *string           `json:"defaultWorkdir"`
	Timestamp      *time.Time        `json:"timestamp"`
	HyperloopIP    *string           `json:"hyperloopIP"`
	VolumeMounts   []volumeMount     `json:"volumeMounts"`
	LifecycleID    *string           `json:"lifecycleID"`
	CABundle       *string           `json:"caBundle"`
}

// parseInitBody decodes a body; empty (or blank) means "no fields".
func parseInitBody(body []byte) (*initBody, error) {
	var b initBody
	if len(bytes.TrimSpace(body)) == 0 {
		return &b, nil
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, fmt.Errorf("invalid request body: %w", err)
	}
	return &b, nil
}

func sha512Hex(s string) string {
	sum := sha512.Sum512([]byte(s))
	return hex.EncodeToString(sum[:])
}

// postInit implements §7.4 (E2B's algorithm; the flavor picks env replace
// or merge, the X-Envd-Version header and the clock step).
func (a *API) postInit(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if a.flavor == state.FlavorE2B {
		w.Header().Set("X-Envd-Version", a.opts.Version)
	}
	w.Header().Set("Cache-Control", "no-store")

	raw, err := io.ReadAll(io.LimitReader(r.Body, maxInitBody+1))
	if err == nil && len(raw) > maxInitBody {
		err = errBodyTooLarge
	}
	if err != nil {
		a.initError(w, http.StatusBadRequest, fmt.Errorf("read request body: %w", err))
		return
	}
	body, err := parseInitBody(raw)
	if err != nil {
		a.initError(w, http.StatusBadRequest, err)
		return
	}

	select {
	case a.initSem <- struct{}{}:
		defer func() { <-a.initSem }()
	case <-r.Context().Done():
		a.initError(w, http.StatusServiceUnavailable, errors.New("another /init is in progress"))
		return
	}

	if err := a.authorizeInit(r.Context(), body.AccessToken); err != nil {
		a.initError(w, http.StatusUnauthorized, err)
		return
	}

	applied := body.Timestamp == nil || a.store.AdvanceInitTimestamp(*body.Timestamp)
	if applied {
		if status, err := a.applyInit(r.Context(), body); err != nil {
			a.initError(w, status, err)
			return
		}
	} else {
		a.log.Info("/init: stale timestamp, data not applied",
			zap.Time("timestamp", *body.Timestamp), zap.Time("newest", a.store.LastInitTimestamp()))
	}

	// Refresh the sandbox identity: after a resume the host has new ids.
	a.startPoll(a.opts.RepollTimeout)

	a.log.Debug("/init done", zap.Bool("applied", applied), zap.Duration("took", time.Since(start)))
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) initError(w http.ResponseWriter, status int, err error) {
	if status == http.StatusUnauthorized {
		a.log.Warn("/init rejected", zap.Error(err))
	} else {
		a.log.Error("/init failed", zap.Int("status", status), zap.Error(err))
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, err.Error())
}

// authorizeInit is step 3 of §7.4: the request token t (nil = absent) must
// equal the current token, or match the MMDS hash; with neither a token
// nor a hash (first setup, or no MMDS) anything goes.
func (a *API) authorizeInit(ctx context.Context, t *secureToken) error {
	current, set := a.store.Token()
	if set && t != nil && tokenEqual(string(*t), current) {
		return nil
	}
	hash := ""
	if !a.opts.IsNotFC && a.opts.MMDS != nil {
		h, err := a.opts.MMDS.AccessTokenHash(ctx)
		if err != nil {
			a.log.Warn("/init: mmds token hash unavailable", zap.Error(err))
		}
		hash = strings.ToLower(strings.TrimSpace(h))
	}
	if hash != "" {
		want := sha512Hex("")
		if t != nil {
			want = sha512Hex(string(*t))
		}
		if subtle.ConstantTimeCompare([]byte(hash), []byte(want)) == 1 {
			return nil
		}
	} else if !set {
		return nil
	}
	if t == nil {
		return errTokenResetDenied
	}
	return errTokenMismatch
}

// applyInit is step 5 of §7.4 for a request that is new (or undated).
func (a *API) applyInit(ctx context.Context, b *initBody) (int, error) {
	if a.flavor == state.FlavorE2B && b.Timestamp != nil {
		if stepped, err := clock.Sync(a.opts.Clock, *b.Timestamp); err != nil {
			a.log.Error("/init: cannot set the clock", zap.Time("to", *b.Timestamp), zap.Error(err))
		} else if stepped {
			a.log.Info("/init: clock stepped", zap.Time("to", *b.Timestamp))
		}
	}

	a.store.Update(func(m state.Mutation) {
		if b.EnvVars != nil {
			env := make(map[string]string, len(b.EnvVars))
			for k, v := range b.EnvVars {
				if m.IsInternalEnv(k) {
					continue // envd's own variables cannot be overridden
				}
				env[k] = v
			}
			if a.flavor == state.FlavorE2B {
				m.ReplaceUserEnv(env)
			} else {
				m.MergeUserEnv(env)
			}
		}
		if b.AccessToken != nil {
			m.SetToken(string(*b.AccessToken))
		} else {
			m.ClearToken()
		}
		if b.DefaultUser != nil {
			m.SetDefaultUser(*b.DefaultUser)
		}
		if b.DefaultWorkdir != nil {
			m.SetDefaultWorkdir(*b.DefaultWorkdir)
		}
	})

	if b.HyperloopIP != nil {
		ip := *b.HyperloopIP
		a.goBG(func(context.Context) { a.setupHyperloop(ip) })
	}

	// The new config is out; a pending post-restore recovery can run now.
	a.recoverIfNeeded(ctx, "init")

	if b.CABundle != nil && *b.CABundle != "" {
		if err := a.ca.install(*b.CABundle); err != nil {
			return http.StatusBadRequest, fmt.Errorf("failed to install CA bundle: %w", err)
		}
	}
	if b.VolumeMounts != nil {
		lifecycle := ""
		if b.LifecycleID != nil {
			lifecycle = *b.LifecycleID
		}
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opts.MountTimeout)
		defer cancel()
		if err := a.nfs.setup(mctx, lifecycle, b.VolumeMounts); err != nil {
			return http.StatusBadRequest, fmt.Errorf("failed to setup NFS volumes: %w", err)
		}
	}
	return 0, nil
}

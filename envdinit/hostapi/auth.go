package hostapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"github.com/envd-project/envd/internal/resterr"
	"net/http"
	"strconv"
)

// Messages of §4.1 and §7.5; clients and tests match on them.
const (
	msgUnauthorized   = "unauthorized access, please provide a valid access token or method signing if supported"
	msgHeaderMismatch = "access token present in header but does not match"
	msgMissingSig     = "missing signature query parameter"
	msgInvalidSig     = "invalid signature"
	msgExpiredSig     = "signature is already expired"
	paramExpiration   = "signature_expiration"
	headerAccessToken = "X-Access-Token"
	signaturePrefix   = "v1_"
	operationRead     = "read"
	operationWrite    = "write"
)

// exempt is the exact method+path list of §4.1 that needs no token.
func (*API) exempt(r *http.Request) bool {
	switch r.Method + r.URL.Path {
	case "GET/health", "GET/files", "POST/files", "POST/init":
		return true
	}
	// POST /snapshot/prepare is exempt in Wrenn's envd (WIRE §4.1), but
	// without a token it lets any sandbox user stop port forwarding until
	// the next /init. Gating it costs no client anything: Wrenn's host agent
	// never sets a token (WIRE §7.4: it sends no accessToken) and so finds
	// the gate open, and no client that sets one calls this route; should a
	// token be set anyway, the agent treats a failed prepare as non-fatal
	// (§7.9).
	return false
}

// TokenGate rejects requests without the access token once one is set
// (§4.1), except the exempt routes. RPCs get the same REST-shaped 401.
func (a *API) TokenGate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, set := a.store.Token()
		if !set || a.exempt(r) || tokenEqual(r.Header.Get(headerAccessToken), token) {
			next.ServeHTTP(w, r)
			return
		}
		resterr.Write(w, http.StatusUnauthorized, msgUnauthorized)
	})
}

// FilesAuth authorizes GET and POST /files (§7.5): no token set → open;
// a non-empty X-Access-Token header must match; otherwise a v1 signature
// over the raw path and username query values, and an expiration (when
// given) not in the past. A malformed signature_expiration is a plain-text
// 400 whether or not a token is set, as from the reference's parameter
// binder.
func (a *API) FilesAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var op string
		switch r.Method {
		case http.MethodGet:
			op = operationRead
		case http.MethodPost:
			op = operationWrite
		default:
			next.ServeHTTP(w, r)
			return
		}
		q := r.URL.Query()
		var expiration *int64
		if vals, ok := q[paramExpiration]; ok && len(vals) > 0 {
			v, err := strconv.ParseInt(vals[0], 10, 64)
			if err != nil {
				http.Error(w, "Invalid format for parameter "+paramExpiration+": "+err.Error(), http.StatusBadRequest)
				return
			}
			expiration = &v
		}
		token, set := a.store.Token()
		if !set {
			next.ServeHTTP(w, r)
			return
		}
		if h := r.Header.Get(headerAccessToken); h != "" {
			if !tokenEqual(h, token) {
				resterr.Write(w, http.StatusUnauthorized, msgHeaderMismatch)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		sig := q.Get("signature")
		if sig == "" {
			resterr.Write(w, http.StatusUnauthorized, msgMissingSig)
			return
		}
		want := Sign(q.Get("path"), op, q.Get("username"), token, expiration)
		if subtle.ConstantTimeCompare([]byte(sig), []byte(want)) != 1 {
			resterr.Write(w, http.StatusUnauthorized, msgInvalidSig)
			return
		}
		// Equal is still valid; 0 and negative values are always in the past.
		if expiration != nil && *expiration < a.opts.Now().Unix() {
			resterr.Write(w, http.StatusUnauthorized, msgExpiredSig)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Sign computes the /files URL signature of §8: "v1_" + unpadded standard
// base64 of SHA-256("path:operation:username:token[:expiration]").
func Sign(path, operation, username, token string, expiration *int64) string {
	in := path + ":" + operation + ":" + username + ":" + token
	if expiration != nil {
		in += ":" + strconv.FormatInt(*expiration, 10)
	}
	sum := sha256.Sum256([]byte(in))
	return signaturePrefix + base64.RawStdEncoding.EncodeToString(sum[:])
}

func tokenEqual(got, want string) bool {
	if got == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

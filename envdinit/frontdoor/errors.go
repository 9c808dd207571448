package frontdoor

import (
	"encoding/json"
	"net/http"

	"connectrpc.com/connect"
)

// writeConnectError answers a REST request the way the reference's authn
// middleware does: a Connect error JSON body.
func writeConnectError(w http.ResponseWriter, ce *connect.Error) {
	status := http.StatusInternalServerError
	if ce.Code() == connect.CodeUnauthenticated {
		status = http.StatusUnauthorized
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	body, _ := json.Marshal(struct {
		Code    string `json:"code"`
		Message string `json:"message,omitempty"`
	}{ce.Code().String(), ce.Message()})
	_, _ = w.Write(body)
}

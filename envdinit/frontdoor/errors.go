package frontdoor

import (
	"encoding/json"
	"net/http"
	"strconv"
)

type connectErrorJSON struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

func (e *connectErrorJSON) marshal() ([]byte, error) { return json.Marshal(e) }

// writeJSONError writes the reference's REST error shape (WIRE.md §7.0).
func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	b, _ := json.Marshal(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{status, msg})
	_, _ = w.Write(append(b, '\n'))
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

func itoa(n int) string { return strconv.Itoa(n) }

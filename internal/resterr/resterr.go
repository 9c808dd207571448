// Package resterr writes the REST error shape of the reference envd
// (WIRE.md §7.0): the HTTP status, and a JSON body {"code": status,
// "message": text} plus a newline, as application/json with nosniff. It runs in
// envd-init (host endpoints, front door) and envd-fs (/files).
package resterr

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/envd-project/envd/internal/errmsg"
)

// Body is the error body for status and msg, the message bounded
// (errmsg.Max): it often echoes a path from the query.
func Body(status int, msg string) []byte {
	b, _ := json.Marshal(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{status, errmsg.Bound(msg)})
	return append(b, '\n')
}

// Write answers w with the error. Headers meant for a body that is not
// coming (a length, an encoding) are dropped.
func Write(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Del("Content-Length")
	h.Del("Content-Encoding")
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(Body(status, msg))
}

// Response is the whole HTTP/1.1 response with the error, for a
// connection that has been taken from net/http; it closes the connection.
func Response(status int, msg string) []byte {
	body := Body(status, msg)
	head := "HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n" +
		"Content-Type: application/json; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n" +
		"Connection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
	return append([]byte(head), body...)
}

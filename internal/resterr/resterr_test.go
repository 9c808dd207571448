package resterr

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestWrite(t *testing.T) {
	rec := httptest.NewRecorder()
	rec.Header().Set("Content-Encoding", "gzip")
	Write(rec, http.StatusNotFound, `path "x" does not exist`)
	if rec.Code != 404 || rec.Body.String() != `{"code":404,"message":"path \"x\" does not exist"}`+"\n" ||
		rec.Header().Get("Content-Type") != "application/json; charset=utf-8" || rec.Header().Get("X-Content-Type-Options") != "nosniff" ||
		rec.Header().Get("Content-Encoding") != "" {
		t.Fatalf("%d %q %v", rec.Code, rec.Body.String(), rec.Header())
	}
}

func TestResponseParses(t *testing.T) {
	res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(Response(503, "down"))), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 503 || !res.Close || string(body) != string(Body(503, "down")) {
		t.Fatalf("%d close=%v %q", res.StatusCode, res.Close, body)
	}
}

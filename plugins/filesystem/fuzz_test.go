package filesystem

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	controlpb "github.com/envd-project/envd/gen/control"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
)

// FuzzMultipartUpload feeds arbitrary multipart bodies to POST /files. Every
// file it writes must stay inside the fuzz directory (the path parameter
// pins it there), the answer must be 200 with a JSON array or a JSON error,
// and no temporary upload file may be left behind.
func FuzzMultipartUpload(f *testing.F) {
	_, one := multipartBody(part{"file", "a.txt", "hello"})
	_, two := multipartBody(part{"file", "a", "1"}, part{"other", "b", "2"})
	f.Add(one, "a.txt")
	f.Add(two, "")
	f.Add(one[:len(one)/2], "x")
	f.Add([]byte("--B\r\nContent-Disposition: form-data; name=\"file\"; filename*=utf-8''%C3%A9\r\n\r\ndata\r\n--B--\r\n"), "é")
	f.Add([]byte("--B\r\nContent-Disposition: form-data; name=file\r\n\r\n--B--"), "n")
	f.Add([]byte("garbage"), "g")

	base := f.TempDir()
	h := NewFilesHandler(zap.NewNop(), defaults.NewStore(&controlpb.Config{DefaultUser: "root"}), newDB())
	f.Fuzz(func(t *testing.T, body []byte, name string) {
		dir, err := os.MkdirTemp(base, "case")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		// Keep the target inside dir whatever the name says.
		target := filepath.Join(dir, "t", filepath.Base(filepath.Clean("/"+name)))
		for _, ct := range []string{`multipart/form-data; boundary=` + boundaryOf(body), "application/octet-stream"} {
			req := httptest.NewRequest(http.MethodPost, "/files?path="+url.QueryEscape(target), bytes.NewReader(body))
			req.Header.Set("Content-Type", ct)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			switch rec.Code {
			case 200:
				var res []uploadResult
				if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
					t.Fatalf("200 with %q", rec.Body)
				}
				for _, r := range res {
					if !strings.HasPrefix(r.Path, dir+"/") {
						t.Fatalf("wrote outside: %s", r.Path)
					}
				}
			default:
				var e struct{ Code int }
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code != rec.Code {
					t.Fatalf("%d with %q", rec.Code, rec.Body)
				}
			}
		}
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && strings.Contains(d.Name(), ".upload-") {
				t.Fatalf("temporary file left: %s", p)
			}
			return nil
		})
	})
}

// boundaryOf guesses the boundary the body uses (its first line), so that
// mutations exercise the part parser rather than only boundary mismatches.
func boundaryOf(body []byte) string {
	line, _, _ := bytes.Cut(body, []byte("\r\n"))
	b := strings.TrimPrefix(string(line), "--")
	if b == "" || len(b) > 70 || strings.ContainsAny(b, "\"\r\n;") {
		return "B"
	}
	return `"` + b + `"`
}

// FuzzResolvePath checks path handling end to end through Stat: no panic,
// every error carries a code, and a relative path is the home directory
// joined with it and cleaned (WIRE §6.1: ".." may climb out of the home; all
// operations run as root anyway), after its escaped raw bytes (U+EF80–U+EFFF,
// rawnames.go) were turned back into bytes.
func FuzzResolvePath(f *testing.F) {
	for _, s := range []string{"", "~", "~/", "~/a/../..", "~root/x", "../../etc/passwd", "/abs/../x", "a\x00b", strings.Repeat("x/", 3000), "./", "~~", "~/~"} {
		f.Add(s)
	}
	s := New(zap.NewNop(), defaults.NewStore(&controlpb.Config{DefaultUser: "root"}), newDB())
	f.Fuzz(func(t *testing.T, p string) {
		_, err := s.Stat(context.Background(), &fspb.StatRequest{Path: p})
		if err != nil && codeOf(err) == 0 {
			t.Fatalf("error without a code: %v", err)
		}
		u, _ := newDB().Lookup("root")
		r, rerr := s.resolve(p, u)
		if rerr != nil {
			if codeOf(rerr) == 0 {
				t.Fatal("resolve error without code")
			}
			return
		}
		if p != "" && !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "~") && r != filepath.Join(u.Home, fsPath(p)) {
			t.Fatalf("%q resolved to %q", p, r)
		}
		if p != "" && !filepath.IsAbs(r) {
			t.Fatalf("%q resolved to a relative path %q", p, r)
		}
	})
}

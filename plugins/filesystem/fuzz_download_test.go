package filesystem

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	controlpb "github.com/envd-project/envd/gen/control"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
)

// FuzzDownloadHeaders sends GET /files for a known file with arbitrary
// Range, Accept-Encoding and If-Range headers. Whatever the headers, the
// answer is one of the statuses WIRE §7.6 allows, and every byte it
// carries is the file's own at the offset it claims: a whole body is the
// file (gunzipped when gzip), a 206 part is the slice its Content-Range
// names, and a Range never comes back gzipped.
func FuzzDownloadHeaders(f *testing.F) {
	for _, s := range [][3]string{
		{"", "", ""}, {"bytes=0-9", "", ""}, {"bytes=-5", "gzip", ""}, {"bytes=5-", "identity;q=0", ""},
		{"bytes=0-0,2-3,-1", "", ""}, {"bytes=999999-", "", ""}, {"bytes=3-1", "", ""}, {"", "gzip;q=1, identity;q=0.5", ""},
		{"", "*;q=0", ""}, {"", "gzip;q=0, identity;q=0", ""}, {"bytes=0-1", "", "\"etag\""}, {"items=0-1", "x-gzip", ""},
		{"bytes=0-18446744073709551615", "GZIP;Q=0.001", "Mon, 02 Jan 2006 15:04:05 GMT"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	content := make([]byte, 3000)
	for i := range content {
		content[i] = byte(i*31 + i/7)
	}
	dir := f.TempDir()
	file := filepath.Join(dir, "data.bin")
	if err := os.WriteFile(file, content, 0o644); err != nil {
		f.Fatal(err)
	}
	h := NewFilesHandler(zap.NewNop(), defaults.NewStore(&controlpb.Config{DefaultUser: "root"}), newDB())
	target := "/files?path=" + url.QueryEscape(file)
	f.Fuzz(func(t *testing.T, rng, acceptEncoding, ifRange string) {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		for k, v := range map[string]string{"Range": rng, "Accept-Encoding": acceptEncoding, "If-Range": ifRange} {
			if v != "" {
				req.Header.Set(k, v)
			}
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		res := rec.Result()
		body := rec.Body.Bytes()
		if !strings.Contains(strings.Join(res.Header.Values("Vary"), ","), "Accept-Encoding") {
			t.Fatalf("no Vary: Accept-Encoding (%d)", res.StatusCode)
		}
		gz := res.Header.Get("Content-Encoding") == "gzip"
		if gz && (rng != "" || ifRange != "") {
			t.Fatalf("a conditional or ranged download came gzipped (%d)", res.StatusCode)
		}
		switch res.StatusCode {
		case http.StatusOK:
			if gz {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(body, content) {
				t.Fatalf("200 body of %d bytes is not the file", len(body))
			}
		case http.StatusPartialContent:
			checkPartial(t, res.Header, body, content)
		case http.StatusRequestedRangeNotSatisfiable, http.StatusNotAcceptable:
			if acceptEncoding == "" && res.StatusCode == http.StatusNotAcceptable {
				t.Fatal("406 without an Accept-Encoding")
			}
		default:
			t.Fatalf("status %d: %s", res.StatusCode, body)
		}
	})
}

// checkPartial checks a 206 body (one range or multipart/byteranges)
// against the file.
func checkPartial(t *testing.T, h http.Header, body, content []byte) {
	t.Helper()
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err == nil && mt == "multipart/byteranges" {
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		parts := 0
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("byteranges: %v", err)
			}
			b, err := io.ReadAll(p)
			if err != nil {
				t.Fatal(err)
			}
			checkSlice(t, p.Header.Get("Content-Range"), b, content)
			parts++
		}
		if parts == 0 {
			t.Fatal("multipart/byteranges without parts")
		}
		return
	}
	checkSlice(t, h.Get("Content-Range"), body, content)
}

func checkSlice(t *testing.T, contentRange string, b, content []byte) {
	t.Helper()
	var first, last, size int
	if _, err := fmt.Sscanf(contentRange, "bytes %d-%d/%d", &first, &last, &size); err != nil {
		t.Fatalf("Content-Range %q: %v", contentRange, err)
	}
	if size != len(content) || first < 0 || last < first || last >= size || !bytes.Equal(b, content[first:last+1]) {
		t.Fatalf("Content-Range %q with %d bytes is not the file's slice", contentRange, len(b))
	}
}

// FuzzMetadataHeaders: X-Metadata-* headers either give metadata within
// WIRE §7.7's limits (lowercase printable keys ≤ 246 bytes, printable
// values, 4096 bytes in all counting the xattr prefix) or an error; never
// anything in between.
func FuzzMetadataHeaders(f *testing.F) {
	f.Add("Origin", "bench", "X-Other", "v")
	f.Add("", "empty key", "ÜBER", "x")
	f.Add(strings.Repeat("k", 247), "v", "a", strings.Repeat("v", 4000))
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		hdr := http.Header{}
		hdr["X-Metadata-"+k1] = []string{v1}
		hdr["x-metadata-"+k2] = []string{v2}
		md, err := parseMetadata(hdr)
		if err != nil {
			if md != nil {
				t.Fatal("metadata with an error")
			}
			return
		}
		total := 0
		for k, v := range md {
			if k == "" || k != strings.ToLower(k) || len(k) > 246 || !printable(k) || !printable(v) {
				t.Fatalf("accepted %q=%q", k, v)
			}
			total += len(MetadataPrefix) + len(k) + len(v)
		}
		if total > 4096 {
			t.Fatalf("accepted %d bytes of metadata", total)
		}
	})
}

package filesystem

import (
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	fspb "github.com/envd-project/envd/gen/filesystem"
)

const benchSize = 100 << 20

// pattern is an endless cheap byte source, so the client side of an upload
// benchmark costs little next to the server.
type pattern struct{}

func (pattern) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i)
	}
	return len(p), nil
}

func BenchmarkListDir10k(b *testing.B) {
	s := newSvc(b, "")
	dir := b.TempDir()
	for i := range 10000 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("file-%05d.txt", i)), nil, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("rpc", func(b *testing.B) {
		for b.Loop() {
			r, err := s.ListDir(context.Background(), &fspb.ListDirRequest{Path: dir})
			if err != nil || len(r.Entries) != 10000 {
				b.Fatal(err)
			}
		}
	})
	// With the protojson encoding a Connect JSON client makes the server do.
	b.Run("rpc+json", func(b *testing.B) {
		for b.Loop() {
			r, err := s.ListDir(context.Background(), &fspb.ListDirRequest{Path: dir})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := protojson.Marshal(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchUpload(b *testing.B, multipartBody bool) {
	srv := newFiles(b)
	dir := b.TempDir()
	target := filepath.Join(dir, "upload.bin")
	// The client sends from a file, as a real one would: net/http then
	// hands it to sendfile and the client side costs almost nothing.
	src := filepath.Join(dir, "source.bin")
	sf, _ := os.Create(src)
	io.Copy(sf, io.LimitReader(pattern{}, benchSize))
	sf.Close()
	b.SetBytes(benchSize)
	b.ReportAllocs()
	for b.Loop() {
		in, err := os.Open(src)
		if err != nil {
			b.Fatal(err)
		}
		var body io.Reader = in
		ctype := "application/octet-stream"
		length := int64(benchSize)
		if multipartBody {
			pr, pw := io.Pipe()
			mw := multipart.NewWriter(pw)
			ctype = mw.FormDataContentType()
			go func() {
				w, _ := mw.CreateFormFile("file", target)
				_, err := io.CopyBuffer(w, onlyReader{in}, make([]byte, 1<<20))
				if err == nil {
					err = mw.Close()
				}
				pw.CloseWithError(err)
			}()
			body, length = pr, -1
		}
		req, _ := http.NewRequest(http.MethodPost, filesURL(srv, target), body)
		req.Header.Set("Content-Type", ctype)
		req.ContentLength = length
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		in.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}

func BenchmarkUploadOctet100MiB(b *testing.B)     { benchUpload(b, false) }
func BenchmarkUploadMultipart100MiB(b *testing.B) { benchUpload(b, true) }

func BenchmarkDownload100MiB(b *testing.B) {
	srv := newFiles(b)
	p := filepath.Join(b.TempDir(), "download.bin")
	f, _ := os.Create(p)
	io.Copy(f, io.LimitReader(pattern{}, benchSize))
	f.Close()
	for _, enc := range []string{"identity", "gzip"} {
		b.Run(enc, func(b *testing.B) {
			b.SetBytes(benchSize)
			buf := make([]byte, 1<<20)
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodGet, filesURL(srv, p), nil)
				req.Header.Set("Accept-Encoding", enc)
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.CopyBuffer(io.Discard, resp.Body, buf)
				resp.Body.Close()
			}
		})
	}
}

// BenchmarkCopyReference100MiB is `cp` of the same file on the same disk:
// the yardstick the transfer targets are ratios of.
func BenchmarkCopyReference100MiB(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src.bin")
	f, _ := os.Create(src)
	io.Copy(f, io.LimitReader(pattern{}, benchSize))
	f.Close()
	b.SetBytes(benchSize)
	for b.Loop() {
		in, _ := os.Open(src)
		out, _ := os.Create(filepath.Join(dir, "dst.bin"))
		if _, err := io.Copy(out, in); err != nil { // copy_file_range, as cp does
			b.Fatal(err)
		}
		in.Close()
		out.Close()
	}
}

// BenchmarkWatchLatency is the time from a write to its event at the
// WatchDir caller.
func BenchmarkWatchLatency(b *testing.B) {
	s := newSvc(b, "")
	dir := b.TempDir()
	events := make(chan string, 1024)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.WatchDir(ctx, &fspb.WatchDirRequest{Path: dir}, func(m *fspb.WatchDirResponse) error {
			if ev := m.GetFilesystem(); ev != nil && ev.Type == fspb.EventType_EVENT_TYPE_WRITE {
				events <- ev.Name
			}
			return nil
		})
	}()
	time.Sleep(100 * time.Millisecond)
	p := filepath.Join(dir, "f")
	f, _ := os.Create(p)
	defer f.Close()
	for b.Loop() {
		f.Write([]byte("x"))
		select {
		case <-events:
		case <-time.After(5 * time.Second):
			b.Fatal("no event")
		}
	}
	cancel()
	<-done
}

// TestUploadBoundedMemory uploads 64 MiB both ways and checks that the
// process allocated only a few MiB doing so (the body is never buffered).
func TestUploadBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	srv := newFiles(t)
	dir := t.TempDir()
	const size = 64 << 20
	for _, mp := range []bool{false, true} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		target := filepath.Join(dir, fmt.Sprint("big-", mp))
		var body io.Reader = io.LimitReader(pattern{}, size)
		ctype := "application/octet-stream"
		if mp {
			pr, pw := io.Pipe()
			mw := multipart.NewWriter(pw)
			ctype = mw.FormDataContentType()
			go func() {
				w, _ := mw.CreateFormFile("file", target)
				_, err := io.CopyBuffer(w, io.LimitReader(pattern{}, size), make([]byte, 256<<10))
				if err == nil {
					err = mw.Close()
				}
				pw.CloseWithError(err)
			}()
			body = pr
		}
		req, _ := http.NewRequest(http.MethodPost, filesURL(srv, target), body)
		req.Header.Set("Content-Type", ctype)
		resp, b := do(t, req)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("multipart=%v: %d MiB allocated for a %d MiB upload", mp, alloc>>20, size>>20)
		if alloc > 24<<20 {
			t.Fatalf("multipart=%v: %d MiB allocated for a %d MiB upload", mp, alloc>>20, size>>20)
		}
		if fi, _ := os.Stat(target); fi.Size() != size {
			t.Fatalf("size %d", fi.Size())
		}
		os.Remove(target)
	}
}

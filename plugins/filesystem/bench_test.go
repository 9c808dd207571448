package filesystem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"

	controlpb "github.com/envd-project/envd/gen/control"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
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

// benchServer serves the handler over loopback TCP or over a Unix socket
// (the way envd-init reaches envd-fs) and returns its base URL and a client.
func benchServer(b *testing.B, unixSocket bool) (string, *http.Client) {
	b.Helper()
	h := NewFilesHandler(zap.NewNop(), defaults.NewStore(&controlpb.Config{DefaultUser: "root"}), newDB())
	var ln net.Listener
	var err error
	tr := &http.Transport{DisableCompression: true}
	if unixSocket {
		sock := filepath.Join(b.TempDir(), "fs.sock")
		ln, err = net.Listen("unix", sock)
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close(); tr.CloseIdleConnections() })
	if unixSocket {
		return "http://envd-fs", &http.Client{Transport: tr}
	}
	return "http://" + ln.Addr().String(), &http.Client{Transport: tr}
}

func benchURL(base, path string) string {
	return base + "/files?" + url.Values{"path": {path}}.Encode()
}

func benchUpload(b *testing.B, multipartBody bool) {
	for _, transport := range []string{"tcp", "unix"} {
		b.Run(transport, func(b *testing.B) { benchUploadOver(b, multipartBody, transport == "unix") })
	}
}

func benchUploadOver(b *testing.B, multipartBody, unixSocket bool) {
	base, client := benchServer(b, unixSocket)
	dir := b.TempDir()
	target := filepath.Join(dir, "upload.bin")
	// The client sends a prepared body file, as a real one sending a file
	// would: net/http hands it to sendfile, so the client side (in this same
	// process, on the same 2 cores) costs almost nothing and the figure is
	// the server's. For multipart the file holds the whole encoded body.
	src := filepath.Join(dir, "source.bin")
	sf, _ := os.Create(src)
	ctype := "application/octet-stream"
	if multipartBody {
		mw := multipart.NewWriter(sf)
		ctype = mw.FormDataContentType()
		w, _ := mw.CreateFormFile("file", target)
		io.Copy(w, io.LimitReader(pattern{}, benchSize))
		mw.Close()
	} else {
		io.Copy(sf, io.LimitReader(pattern{}, benchSize))
	}
	fi, _ := sf.Stat()
	sf.Close()
	b.SetBytes(benchSize)
	b.ReportAllocs()
	cpu0 := cpuTime()
	defer func() { b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e6, "cpu-ms/op") }()
	for b.Loop() {
		in, err := os.Open(src)
		if err != nil {
			b.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodPost, benchURL(base, target), in)
		req.Header.Set("Content-Type", ctype)
		req.ContentLength = fi.Size()
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
	p := filepath.Join(b.TempDir(), "download.bin")
	f, _ := os.Create(p)
	io.Copy(f, io.LimitReader(pattern{}, benchSize))
	f.Close()
	for _, transport := range []string{"tcp", "unix"} {
		base, client := benchServer(b, transport == "unix")
		for _, enc := range []string{"identity", "gzip"} {
			b.Run(transport+"/"+enc, func(b *testing.B) {
				b.SetBytes(benchSize)
				buf := make([]byte, 1<<20)
				for b.Loop() {
					req, _ := http.NewRequest(http.MethodGet, benchURL(base, p), nil)
					req.Header.Set("Accept-Encoding", enc)
					resp, err := client.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					n, _ := io.CopyBuffer(io.Discard, resp.Body, buf)
					resp.Body.Close()
					if enc == "identity" && n != benchSize {
						b.Fatalf("got %d bytes", n)
					}
				}
			})
		}
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

// BenchmarkUploadHandler calls the handler directly with the body in
// memory: the server's own cost (parsing and disk writes) without a socket
// or a client competing for the 2 cores.
func BenchmarkUploadHandler(b *testing.B) {
	h := NewFilesHandler(zap.NewNop(), defaults.NewStore(&controlpb.Config{DefaultUser: "root"}), newDB())
	target := filepath.Join(b.TempDir(), "upload.bin")
	data, _ := io.ReadAll(io.LimitReader(pattern{}, benchSize))
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	w, _ := mw.CreateFormFile("file", target)
	w.Write(data)
	mw.Close()
	for _, c := range []struct {
		name, ctype string
		body        []byte
	}{
		{"octet", "application/octet-stream", data},
		{"multipart", mw.FormDataContentType(), mp.Bytes()},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(benchSize)
			// CPU time is steadier than wall time on a shared machine.
			cpu0 := cpuTime()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, "/files?"+url.Values{"path": {target}}.Encode(), bytes.NewReader(c.body))
				req.Header.Set("Content-Type", c.ctype)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != 200 {
					b.Fatalf("%d %s", rec.Code, rec.Body)
				}
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e6, "cpu-ms/op")
		})
	}
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

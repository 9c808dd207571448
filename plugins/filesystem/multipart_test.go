package filesystem

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"mime/quotedprintable"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type parsedPart struct {
	header textproto.MIMEHeader
	data   []byte
	err    bool // reading the data failed
}

// parseStd parses body with mime/multipart, the reference; err is the
// error that ended the parts (nil: the final boundary).
func parseStd(body []byte, boundary string) ([]parsedPart, error) {
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	var parts []parsedPart
	for range 1000 {
		p, err := mr.NextPart()
		if err == io.EOF {
			return parts, nil
		}
		if err != nil {
			return parts, err
		}
		data, err := io.ReadAll(p)
		parts = append(parts, parsedPart{header: p.Header, data: data, err: err != nil})
		if err != nil {
			return parts, err
		}
	}
	return parts, errors.New("too many parts")
}

// parseOurs does the same with multipartReader and a window of the given
// size, reading data through next as uploads do.
func parseOurs(body []byte, boundary string, window int) ([]parsedPart, error) {
	mr := newMultipartReader(bytes.NewReader(body), boundary, make([]byte, window))
	var parts []parsedPart
	for range 1000 {
		p, err := mr.nextPart()
		if err == io.EOF {
			return parts, nil
		}
		if err != nil {
			return parts, err
		}
		var data []byte
		var rerr error
		if p.quotedPrintable {
			data, rerr = io.ReadAll(quotedprintable.NewReader(p))
		} else {
			for {
				chunk, err := p.next()
				if len(chunk) > window {
					return parts, fmt.Errorf("chunk of %d bytes from a %d byte window", len(chunk), window)
				}
				data = append(data, chunk...)
				if err != nil {
					if err != io.EOF {
						rerr = err
					}
					break
				}
			}
		}
		if data == nil {
			data = []byte{}
		}
		parts = append(parts, parsedPart{header: p.header, data: data, err: rerr != nil})
		if rerr != nil {
			return parts, rerr
		}
	}
	return parts, errors.New("too many parts")
}

// compareParsers checks that multipartReader finds the parts, headers and
// data mime/multipart finds, and fails where it fails, apart from the
// documented differences.
func compareParsers(t *testing.T, body []byte, boundary string, window int) {
	t.Helper()
	want, werr := parseStd(body, boundary)
	got, gerr := parseOurs(body, boundary, window)
	switch {
	case werr != nil && errors.Is(werr, bufio.ErrBufferFull):
		return // a line longer than mime/multipart's 4 KiB buffer
	case errors.Is(gerr, errMultipartLineTooLong) || errors.Is(gerr, errMultipartHeaderTooLong):
		return // a line or header block longer than the test's small window
	case gerr != nil && strings.Contains(gerr.Error(), "boundary is too long"):
		return
	case werr == nil && gerr != nil && errors.Is(gerr, io.ErrUnexpectedEOF) && strings.Contains(gerr.Error(), "part header"):
		// mime/multipart takes a body cut inside a part's header for the
		// end of the parts.
		if len(got) != len(want) {
			t.Fatalf("cut in a header: %d parts, mime/multipart %d", len(got), len(want))
		}
		want = want[:len(got)]
	case (werr == nil) != (gerr == nil):
		t.Fatalf("error %v, mime/multipart: %v", gerr, werr)
	}
	if len(got) != len(want) {
		t.Fatalf("%d parts (%v), mime/multipart %d (%v)", len(got), gerr, len(want), werr)
	}
	for i := range got {
		if !reflect.DeepEqual(got[i].header, want[i].header) {
			t.Fatalf("part %d header %v, mime/multipart %v", i, got[i].header, want[i].header)
		}
		if got[i].err != want[i].err {
			t.Fatalf("part %d: read error %v, mime/multipart %v (%v / %v)", i, got[i].err, want[i].err, gerr, werr)
		}
		if !bytes.Equal(got[i].data, want[i].data) {
			t.Fatalf("part %d: %d bytes %q, mime/multipart %d bytes %q", i, len(got[i].data), trunc(got[i].data), len(want[i].data), trunc(want[i].data))
		}
	}
}

func trunc(b []byte) []byte {
	if len(b) > 200 {
		return b[:200]
	}
	return b
}

// windowFor maps a fuzzed number to a window size the reader accepts for
// boundary, small enough that delimiters straddle window edges.
func windowFor(boundary string, w uint16) int {
	return 4*len("--"+boundary+"--") + int(w)%4096
}

func FuzzMultipartReader(f *testing.F) {
	for _, s := range multipartSeeds() {
		f.Add([]byte(s.body), s.boundary, uint16(0))
		f.Add([]byte(s.body), s.boundary, uint16(37))
	}
	f.Fuzz(func(t *testing.T, body []byte, boundary string, w uint16) {
		if boundary == "" {
			boundary = "B"
		}
		compareParsers(t, body, boundary, windowFor(boundary, w))
	})
}

type mpSeed struct{ boundary, body string }

func multipartSeeds() []mpSeed {
	_, std := multipartBody(part{"file", "a.txt", "hello"}, part{"other", "b", strings.Repeat("xy\r\n", 50)}, part{"file", "", ""})
	stdBoundary := string(bytes.TrimPrefix(std[:bytes.IndexByte(std, '\r')], []byte("--")))
	return []mpSeed{
		{stdBoundary, string(std)},
		{"B", "--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ndata\r\n--B--\r\n"},
		{"B", "preamble line\r\nmore\r\n--B  \r\nA: 1\r\n\r\nx\r\n--B\t\r\n\r\n\r\n--B-- \r\nepilogue"},
		{"B", "--B\nA: 1\n\nbare LF\n--B\nB: 2\n\n\n--B--"},
		{"B", "--B\r\nA: 1\r\n\r\n--B\r\n\r\n--B--"}, // empty parts, no CRLF before the delimiter
		{"B", "--B\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nsoft\r\n--B--\r\n"},
		{"B", "--B\r\nA: 1\r\n\r\nnot a\r\n--Bx delimiter\r\n--B-\r\n--B--\r\n"},
		{"B", "--B\r\nA: 1\r\n continued\r\n\tagain\r\n\r\nx\r\n--B--"},
		{"B", "--B\r\n continuation first\r\n\r\nx\r\n--B--"},
		{"B", "--B\r\nno colon\r\n\r\nx\r\n--B--"},
		{"B", "--B\r\nA: 1\r\n\r\ncut in the data"},
		{"B", "--B\r\nA: 1\r\n\r\ncut at a delimiter\r\n--B"},
		{"B", "--B\r\nA: 1\r\n\r\ncut in a delimiter\r\n--"},
		{"B", "--B\r\nA: 1\r\n"},
		{"B", "--B\r\nA: 1\r\n\r\nx\r\n--B\r\ngarbage\r\n"},
		{"B", "--B\r\nA: 1\r\n\r\nx\r\n--B--\r\n--B\r\nA: 2\r\n\r\ny\r\n--B--"},
		{"B", "--B\r\nA: 1\r\n\r\nx\r\ntrailing junk\r\n--B--"},
		{"B", "--B\r\nA: 1\r\n\r\nx\r\n--B\r\n\r\n\r\nnot a delimiter line\r\n--B--"},
		{"B", ""},
		{"B", "--B--"},
		{"with space", "--with space\r\nA: 1\r\n\r\nx\r\n--with space--"},
		{strings.Repeat("b", 70), "--" + strings.Repeat("b", 70) + "\r\nA: 1\r\n\r\n" + strings.Repeat("\r\n--"+strings.Repeat("b", 69)+"c", 30) + "\r\n--" + strings.Repeat("b", 70) + "--\r\n"},
	}
}

func TestMultipartReaderMatchesMime(t *testing.T) {
	for i, s := range multipartSeeds() {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			for w := 0; w < 300; w += 7 {
				compareParsers(t, []byte(s.body), s.boundary, windowFor(s.boundary, uint16(w)))
			}
			compareParsers(t, []byte(s.body), s.boundary, copyBufSize)
		})
	}
}

// TestMultipartReaderRandom compares both parsers on bodies that put
// delimiters, near-delimiters and line breaks at every distance from the
// window's edges.
func TestMultipartReaderRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const boundary = "0123456789abcdef0123456789abcdef"
	atoms := []string{"\r", "\n", "\r\n", "-", "--", "\r\n--" + boundary[:rng.IntN(len(boundary))], "\r\n--" + boundary + "x", "a", "0123", "\x00\xff"}
	for i := range 300 {
		var body strings.Builder
		body.WriteString("--" + boundary + "\r\n")
		nparts := 1 + rng.IntN(4)
		for p := range nparts {
			fmt.Fprintf(&body, "Content-Disposition: form-data; name=\"file\"; filename=\"f%d\"\r\n\r\n", p)
			for range rng.IntN(200) {
				body.WriteString(atoms[rng.IntN(len(atoms))])
			}
			if p < nparts-1 {
				body.WriteString("\r\n--" + boundary + "\r\n")
			}
		}
		body.WriteString("\r\n--" + boundary + "--\r\n")
		b := []byte(body.String())
		if i%10 == 0 {
			b = b[:rng.IntN(len(b))]
		}
		compareParsers(t, b, boundary, windowFor(boundary, uint16(rng.IntN(400))))
	}
}

// TestMultipartFind checks the sampled delimiter search against bytes.Index
// with the delimiter at every position, and on data made of the
// delimiter's own bytes.
func TestMultipartFind(t *testing.T) {
	m := newMultipartReader(nil, "2f1c0e6e7a0d8c7b0b1a7f4e2c9d6b5a8e3f1d0c9b8a7f6e5d4c3b2a1f0e", make([]byte, 4096))
	needle := m.nlDashBoundary
	rng := rand.New(rand.NewPCG(3, 4))
	for size := 0; size < 400; size += 13 {
		data := make([]byte, size)
		for i := range data {
			data[i] = needle[rng.IntN(len(needle))] // only the delimiter's bytes
		}
		if got, want := m.find(data), bytes.Index(data, needle); got != want {
			t.Fatalf("size %d: %d, bytes.Index %d", size, got, want)
		}
		for at := 0; at+len(needle) <= size; at++ {
			d := bytes.Clone(data)
			copy(d[at:], needle)
			if got, want := m.find(d), bytes.Index(d, needle); got != want {
				t.Fatalf("size %d, at %d: %d, bytes.Index %d", size, at, got, want)
			}
		}
	}
}

// TestMultipartManySmallParts: many parts in one window are each found in
// place, without moving the window's data for each (which would be
// quadratic).
func TestMultipartManySmallParts(t *testing.T) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	const n = 20000
	for i := range n {
		w, _ := mw.CreateFormFile("file", fmt.Sprint(i))
		fmt.Fprint(w, i)
	}
	mw.Close()
	src := &countingReader{r: &body}
	mr := newMultipartReader(src, mw.Boundary(), make([]byte, copyBufSize))
	for i := range n {
		p, err := mr.nextPart()
		if err != nil {
			t.Fatal(i, err)
		}
		data, err := p.next()
		if err != io.EOF || string(data) != fmt.Sprint(i) {
			t.Fatalf("part %d: %q %v", i, data, err)
		}
	}
	if _, err := mr.nextPart(); err != io.EOF {
		t.Fatal(err)
	}
	if src.reads > 4*body.Cap()/copyBufSize+10 {
		t.Fatalf("%d reads", src.reads)
	}
}

type countingReader struct {
	r     io.Reader
	reads int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	return c.r.Read(p)
}

// TestUploadMultipartLarge sends several multi-window parts whose data is
// full of near-delimiters, plain and gzipped, and a quoted-printable part
// and a body with bare "\n" line breaks; every file must hold exactly its
// part's data.
func TestUploadMultipartLarge(t *testing.T) {
	srv := newFiles(t)
	dir := t.TempDir()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	rng := rand.New(rand.NewPCG(5, 6))
	near := []byte("\r\n--" + mw.Boundary())
	want := map[string][]byte{}
	for i, size := range []int{3 << 20, 0, copyBufSize - 1, copyBufSize, 1, 2*copyBufSize + 17} {
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		// Delimiters cut short or followed by a wrong byte, and one cut by
		// a window's edge.
		for at := 0; at+len(near)+1 < size; at += 1 + rng.IntN(200000) {
			n := copy(data[at:], near[:1+rng.IntN(len(near))])
			if n == len(near) {
				data[at+n] = 'x'
			}
		}
		p := filepath.Join(dir, fmt.Sprint("f", i))
		want[p] = data
		w, _ := mw.CreateFormFile("file", p)
		w.Write(data)
		o, _ := mw.CreateFormField("other")
		o.Write(data[:min(len(data), 1000)])
	}
	mw.Close()
	check := func(t *testing.T) {
		for p, data := range want {
			if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s: %d bytes, want %d (%v)", p, len(got), len(data), err)
			}
			os.Remove(p)
		}
	}
	post := func(t *testing.T, body io.Reader, ctype string, hdr ...string) []uploadResult {
		req, _ := http.NewRequest(http.MethodPost, filesURL(srv, ""), body)
		req.Header.Set("Content-Type", ctype)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, b := do(t, req)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		var res []uploadResult
		if err := json.Unmarshal(b, &res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	t.Run("plain", func(t *testing.T) {
		if res := post(t, bytes.NewReader(body.Bytes()), mw.FormDataContentType()); len(res) != len(want) {
			t.Fatalf("%d results", len(res))
		}
		check(t)
	})
	t.Run("gzip", func(t *testing.T) {
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		zw.Write(body.Bytes())
		zw.Close()
		post(t, &zb, mw.FormDataContentType(), "Content-Encoding", "gzip")
		check(t)
	})
	t.Run("quoted-printable", func(t *testing.T) {
		p := filepath.Join(dir, "qp")
		b := "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + p + "\"\r\n" +
			"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nsoft\r\n--B--\r\n"
		post(t, strings.NewReader(b), "multipart/form-data; boundary=B")
		if got, _ := os.ReadFile(p); string(got) != "café soft" {
			t.Fatalf("%q", got)
		}
	})
	t.Run("bare LF", func(t *testing.T) {
		p := filepath.Join(dir, "lf")
		b := "--B\nContent-Disposition: form-data; name=\"file\"; filename=\"" + p + "\"\n\nline\r\n--B\n\n--B--"
		post(t, strings.NewReader(b), "multipart/form-data; boundary=B")
		if got, _ := os.ReadFile(p); string(got) != "line\r" {
			t.Fatalf("%q", got)
		}
	})
}

// TestUploadMultipartErrors: syntax errors, an empty or boundary-less body
// and a broken gzip stream answer 400 (issue 12: they were 500), and a
// failed part leaves no file behind.
func TestUploadMultipartErrors(t *testing.T) {
	srv := newFiles(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "x")
	head := "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + p + "\"\r\n\r\n"
	for _, c := range []struct {
		name, ctype, body string
		code              int
	}{
		{"no boundary", "multipart/form-data", head + "x\r\n--B--", 400},
		{"boundary too long", "multipart/form-data; boundary=" + strings.Repeat("b", copyBufSize/4), "", 400},
		{"cut in the data", "multipart/form-data; boundary=B", head + "xyz", 400},
		{"cut in a header", "multipart/form-data; boundary=B", "--B\r\nContent-Disposition: form-data; name=\"file\"", 400},
		{"bad header", "multipart/form-data; boundary=B", "--B\r\nno colon\r\n\r\nx\r\n--B--", 400},
		{"header larger than the window", "multipart/form-data; boundary=B", "--B\r\nA: " + strings.Repeat("a", copyBufSize) + "\r\n\r\nx\r\n--B--", 400},
		{"empty body", "multipart/form-data; boundary=B", "", 400},
		{"empty body, no boundary", "multipart/form-data", "", 400},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, filesURL(srv, ""), strings.NewReader(c.body))
			req.Header.Set("Content-Type", c.ctype)
			resp, b := do(t, req)
			wantJSONError(t, resp, b, c.code, "")
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Fatalf("left behind: %v", ents)
			}
		})
	}
	// A part that is complete is kept when a later one fails.
	req, _ := http.NewRequest(http.MethodPost, filesURL(srv, ""), strings.NewReader(head+"x\r\n--B\r\njunk"))
	req.Header.Set("Content-Type", "multipart/form-data; boundary=B")
	resp, b := do(t, req)
	wantJSONError(t, resp, b, 400, "multipart")
	if got, _ := os.ReadFile(p); string(got) != "x" {
		t.Fatalf("%q", got)
	}
	os.Remove(p)
	// A gzip stream cut inside the first part's data. (A broken CRC goes
	// unnoticed, as with E2B: the parts end before the gzip trailer.)
	_, mb := multipartBody(part{"file", p, strings.Repeat("data", 100000)})
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(mb)
	zw.Close()
	bad := zb.Bytes()[:zb.Len()/2]
	req, _ = http.NewRequest(http.MethodPost, filesURL(srv, ""), bytes.NewReader(bad))
	req.Header.Set("Content-Type", "multipart/form-data; boundary="+string(mb[2:bytes.IndexByte(mb, '\r')]))
	req.Header.Set("Content-Encoding", "gzip")
	resp, b = do(t, req)
	wantJSONError(t, resp, b, 400, "error decompressing request body")
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
}

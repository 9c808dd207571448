package filesystem

import (
	"compress/flate"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/envd-project/envd/internal/resterr"
	"io"
	"io/fs"
	"mime"
	"mime/quotedprintable"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/envd-project/envd/internal/paths"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
)

// copyBufSize is the unit of disk and socket I/O for transfers: large enough
// that a 1 GiB transfer costs about a thousand write calls, small enough that
// a few concurrent transfers stay within a few MiB.
const copyBufSize = 1 << 20

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// gzipPool reuses compressors across gzip downloads: each one carries about
// 1 MiB of hash tables and window, which a download per call turned into
// garbage that raised envd-fs's heap goal under load.
var gzipPool = sync.Pool{New: func() any {
	gz, _ := gzip.NewWriterLevel(io.Discard, flate.BestSpeed)
	return gz
}}

// FilesHandler serves GET /files, POST /files and POST /files/compose (WIRE
// §7.6–7.8). Access tokens and URL signatures are checked by envd-init
// before a request reaches it.
type FilesHandler struct {
	log  *zap.Logger
	defs *defaults.Store
	db   *users.DB
}

// NewFilesHandler returns the /files handler.
func NewFilesHandler(log *zap.Logger, defs *defaults.Store, db *users.DB) http.Handler {
	return &FilesHandler{log: log, defs: defs, db: db}
}

func (h *FilesHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/files":
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			h.download(w, r)
		case http.MethodPost:
			h.upload(w, r)
		default:
			w.Header().Set("Allow", "GET, HEAD, POST")
			jsonError(w, http.StatusMethodNotAllowed, "method not allowed")
		}
	case "/files/compose":
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			jsonError(w, http.StatusMethodNotAllowed, "method not allowed")
			return
		}
		h.compose(w, r)
	default:
		jsonError(w, http.StatusNotFound, "not found")
	}
}

// jsonError writes the REST error shape of WIRE §7.0.
func jsonError(w http.ResponseWriter, code int, msg string) { resterr.Write(w, code, msg) }

// httpError is a failure with the status it is answered with.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) *httpError {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

// lookupUser applies WIRE §7.6 steps 2–3 for the username query value.
func (h *FilesHandler) lookupUser(name string) (*users.User, *httpError) {
	name = h.defs.User(name)
	if name == "" {
		return nil, errorf(http.StatusBadRequest, "username not provided")
	}
	u, err := h.db.Lookup(name)
	if err != nil {
		if errors.Is(err, users.ErrUnknownUser) {
			return nil, errorf(http.StatusUnauthorized, "error looking up user '%s': %v", name, err)
		}
		return nil, errorf(http.StatusInternalServerError, "error looking up user '%s': %v", name, err)
	}
	return u, nil
}

func (h *FilesHandler) resolve(p string, u *users.User) (string, *httpError) {
	r, err := paths.Resolve(fsPath(p), u.Home, h.defs.Get().GetDefaultWorkdir())
	if err != nil {
		return "", errorf(http.StatusBadRequest, "error resolving path '%s': %v", p, err)
	}
	return r, nil
}

// ---- GET /files ----

func (h *FilesHandler) download(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	u, herr := h.lookupUser(q.Get("username"))
	if herr != nil {
		jsonError(w, herr.code, herr.msg)
		return
	}
	p, herr := h.resolve(q.Get("path"), u)
	if herr != nil {
		jsonError(w, herr.code, herr.msg)
		return
	}
	// Opened O_PATH first and reopened for reading only if it is a regular
	// file: a FIFO, socket or device is never opened for I/O, so nothing
	// can pin a thread in open(2) or read(2) (WIRE §7.6 lets us refuse them).
	f, st, err := openRegular(unix.AT_FDCWD, p, unix.O_RDONLY, false)
	switch {
	case err == nil:
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
		jsonError(w, http.StatusNotFound, fmt.Sprintf("path '%s' does not exist", p))
		return
	case errors.Is(err, unix.EISDIR):
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("path '%s' is a directory", p))
		return
	case errors.Is(err, errNotRegular):
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("path '%s' is not a regular file", p))
		return
	case st == nil:
		jsonError(w, http.StatusInternalServerError, fmt.Sprintf("error checking if path exists: %v", &fs.PathError{Op: "stat", Path: p, Err: err}))
		return
	default:
		jsonError(w, http.StatusInternalServerError, fmt.Sprintf("error opening file '%s': %v", p, err))
		return
	}
	defer f.Close()
	modTime := time.Unix(st.Mtim.Sec, st.Mtim.Nsec)

	w.Header().Add("Vary", "Accept-Encoding")
	useGzip, ok := negotiateEncoding(r.Header.Values("Accept-Encoding"))
	conditional := r.Header.Get("Range") != "" || r.Header.Get("If-Modified-Since") != "" ||
		r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Range") != ""
	if conditional {
		useGzip = false
		ok = identityAcceptable(r.Header.Values("Accept-Encoding"))
	}
	if !ok {
		jsonError(w, http.StatusNotAcceptable, "no acceptable encoding found, supported: [gzip]")
		return
	}

	name := filepath.Base(p)
	w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": name}))

	if !useGzip {
		// ServeContent handles Range, conditionals and HEAD; with a known
		// length the response writer hands the *os.File to the socket's
		// ReadFrom, so the kernel moves the bytes (sendfile) on TCP.
		http.ServeContent(w, r, name, modTime, f)
		return
	}
	ctype := mime.TypeByExtension(filepath.Ext(p))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Encoding", "gzip")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	// BestSpeed: compression runs at a few hundred MB/s; higher levels would
	// make the CPU, not the link, the bottleneck of a download.
	gz := gzipPool.Get().(*gzip.Writer)
	gz.Reset(w)
	defer func() {
		gz.Reset(io.Discard) // drops the reference to this response
		gzipPool.Put(gz)
	}()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	if _, err := io.CopyBuffer(gz, onlyReader{f}, *bp); err != nil {
		h.log.Debug("gzip download interrupted", zap.String("path", p), zap.Error(err))
		return
	}
	if err := gz.Close(); err != nil {
		h.log.Debug("gzip download interrupted", zap.String("path", p), zap.Error(err))
	}
}

// onlyReader hides WriterTo/ReaderFrom so CopyBuffer uses our buffer.
type onlyReader struct{ io.Reader }

type coding struct {
	name string
	q    float64
}

func parseAcceptEncoding(values []string) []coding {
	var out []coding
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			name, params, _ := strings.Cut(part, ";")
			c := coding{name: strings.ToLower(strings.TrimSpace(name)), q: 1}
			for _, prm := range strings.Split(params, ";") {
				k, val, found := strings.Cut(strings.TrimSpace(prm), "=")
				if found && strings.EqualFold(strings.TrimSpace(k), "q") {
					if q, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil && q >= 0 && q <= 1 {
						c.q = q
					} else {
						c.q = 0 // a malformed weight is not a preference
					}
				}
			}
			out = append(out, c)
		}
	}
	return out
}

// negotiateEncoding picks gzip or identity per WIRE §7.6 step 6; ok is false
// when neither is acceptable.
func negotiateEncoding(values []string) (useGzip, ok bool) {
	cs := parseAcceptEncoding(values)
	if len(cs) == 0 {
		return false, true
	}
	idQ, gzQ := -1.0, -1.0 // -1: not mentioned
	starQ := -1.0
	for _, c := range cs {
		switch c.name {
		case "identity":
			idQ = c.q
		case "gzip", "x-gzip":
			gzQ = c.q
		case "*":
			starQ = c.q
		}
	}
	identityOK := identityFrom(idQ, starQ)
	// "*" stands for gzip only when identity was refused explicitly.
	if gzQ < 0 && starQ > 0 && idQ == 0 {
		gzQ = starQ
	}
	switch {
	case gzQ > 0 && (!identityOK || gzQ >= max(idQ, 0)):
		return true, true
	case identityOK:
		return false, true
	}
	return false, false
}

func identityFrom(idQ, starQ float64) bool {
	switch {
	case idQ >= 0:
		return idQ > 0
	case starQ == 0:
		return false
	}
	return true
}

func identityAcceptable(values []string) bool {
	idQ, starQ := -1.0, -1.0
	for _, c := range parseAcceptEncoding(values) {
		switch c.name {
		case "identity":
			idQ = c.q
		case "*":
			starQ = c.q
		}
	}
	return identityFrom(idQ, starQ)
}

// ---- POST /files ----

type uploadResult struct {
	Path     string            `json:"path"`
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// gzipBody marks decompression failures so they answer 400, not 500.
type gzipBody struct{ r *gzip.Reader }

type gzipError struct{ err error }

func (e *gzipError) Error() string { return e.err.Error() }
func (e *gzipError) Unwrap() error { return e.err }

func (g gzipBody) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	if err != nil && err != io.EOF {
		var ce flate.CorruptInputError
		if errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) || errors.As(err, &ce) ||
			errors.Is(err, io.ErrUnexpectedEOF) {
			err = &gzipError{err}
		}
	}
	return n, err
}

func (h *FilesHandler) upload(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	username := h.defs.User(q.Get("username"))
	if username == "" {
		jsonError(w, http.StatusBadRequest, "username not provided")
		return
	}

	var body io.Reader = r.Body
	switch ce := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); ce {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			jsonError(w, http.StatusBadRequest, fmt.Sprintf("error decompressing request body: %v", err))
			return
		}
		defer zr.Close()
		body = gzipBody{zr}
	default:
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("unsupported Content-Encoding: %s", ce))
		return
	}

	u, herr := h.lookupUser(username)
	if herr != nil {
		jsonError(w, herr.code, herr.msg)
		return
	}
	md, err := parseMetadata(r.Header)
	if err != nil {
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("invalid metadata: %v", err))
		return
	}

	ct := r.Header.Get("Content-Type")
	mediaType, params, _ := mime.ParseMediaType(ct)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)

	var results []uploadResult
	switch {
	case mediaType == "application/octet-stream":
		if !q.Has("path") || q.Get("path") == "" {
			jsonError(w, http.StatusBadRequest, "path query parameter is required for raw body upload")
			return
		}
		p, herr := h.resolve(q.Get("path"), u)
		if herr != nil {
			jsonError(w, herr.code, herr.msg)
			return
		}
		clen := r.ContentLength
		if body != r.Body {
			clen = -1 // the length on the wire is not the file's
		}
		if herr := h.writeFile(u, p, &readerSource{r: body, buf: *bp}, clen, md); herr != nil {
			jsonError(w, herr.code, herr.msg)
			return
		}
		results = append(results, h.result(p))
	case strings.HasPrefix(mediaType, "multipart/"):
		// The pooled buffer is the parser's window; file parts are written
		// straight from it.
		mr := newMultipartReader(body, params["boundary"], *bp)
		seen := map[string]bool{}
		results = []uploadResult{}
		for {
			part, err := mr.nextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				if ge := new(gzipError); errors.As(err, &ge) {
					jsonError(w, http.StatusBadRequest, fmt.Sprintf("error decompressing request body: %v", err))
					return
				}
				code := http.StatusInternalServerError
				if malformedBody(err) {
					code = http.StatusBadRequest // WIRE §7.7 has 500; a client's mistake is a 400
				}
				jsonError(w, code, fmt.Sprintf("error parsing multipart body: %v", err))
				return
			}
			_, cd, _ := mime.ParseMediaType(part.header.Get("Content-Disposition"))
			if cd["name"] != "file" {
				continue // nextPart skips the rest of it
			}
			// The filename is a path, used verbatim (Part.FileName would
			// strip it to its base name).
			target := q.Get("path")
			if target == "" {
				target = cd["filename"]
			}
			if target == "" {
				jsonError(w, http.StatusBadRequest, "missing filename in multipart part and no path query parameter")
				return
			}
			p, herr := h.resolve(target, u)
			if herr != nil {
				jsonError(w, herr.code, herr.msg)
				return
			}
			if seen[p] {
				jsonError(w, http.StatusBadRequest, fmt.Sprintf("you cannot upload multiple files to the same path '%s' in one upload request", p))
				return
			}
			seen[p] = true
			if herr := h.writePart(u, p, part, md); herr != nil {
				jsonError(w, herr.code, herr.msg)
				return
			}
			results = append(results, h.result(p))
		}
	default:
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("unsupported content type: %s, expected multipart/form-data or application/octet-stream", ct))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	json.NewEncoder(w).Encode(results)
}

// writePart stores a multipart file part at p.
func (h *FilesHandler) writePart(u *users.User, p string, part *multipartPart, md map[string]string) *httpError {
	if !part.quotedPrintable {
		return h.writeFile(u, p, part, -1, md)
	}
	// Decoded as mime/multipart's NextPart does; the slow path.
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	return h.writeFile(u, p, &readerSource{r: quotedprintable.NewReader(part), buf: *bp}, -1, md)
}

func (h *FilesHandler) result(p string) uploadResult {
	return uploadResult{Path: wireName(p), Name: wireName(filepath.Base(p)), Type: "file", Metadata: newNames(h.db).metadata(p)}
}

// parseMetadata turns X-Metadata-<key> headers into metadata (WIRE §7.7 step 4).
func parseMetadata(hdr http.Header) (map[string]string, error) {
	const prefix = "x-metadata-"
	md := map[string]string{}
	total := 0
	for k, vals := range hdr {
		lk := strings.ToLower(k)
		if !strings.HasPrefix(lk, prefix) {
			continue
		}
		key := lk[len(prefix):]
		if key == "" || len(vals) == 0 {
			continue
		}
		if _, dup := md[key]; dup {
			continue
		}
		val := vals[0]
		if !printable(key) {
			return nil, fmt.Errorf("key %q contains characters outside printable ASCII", key)
		}
		if !printable(val) {
			return nil, fmt.Errorf("value of key %q contains characters outside printable ASCII", key)
		}
		if len(key) > 246 {
			return nil, fmt.Errorf("key %q is longer than 246 bytes", key)
		}
		total += len(MetadataPrefix) + len(key) + len(val)
		if total > 4096 {
			return nil, errors.New("metadata is larger than 4096 bytes in total")
		}
		md[key] = val
	}
	return md, nil
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// ---- POST /files/compose ----

type composeRequest struct {
	SourcePaths []string `json:"source_paths"`
	Destination string   `json:"destination"`
	Username    *string  `json:"username"`
}

func (h *FilesHandler) compose(w http.ResponseWriter, r *http.Request) {
	var req composeRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	if err := dec.Decode(&req); err != nil {
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("invalid request body: %v", err))
		return
	}
	if len(req.SourcePaths) == 0 {
		jsonError(w, http.StatusBadRequest, "source_paths must not be empty")
		return
	}
	if req.Destination == "" {
		jsonError(w, http.StatusBadRequest, "destination is required")
		return
	}
	name := ""
	if req.Username != nil {
		name = *req.Username
	}
	u, herr := h.lookupUser(name)
	if herr != nil {
		jsonError(w, herr.code, herr.msg)
		return
	}
	dst, herr := h.resolve(req.Destination, u)
	if herr != nil {
		jsonError(w, herr.code, herr.msg)
		return
	}
	srcs := make([]string, len(req.SourcePaths))
	for i, sp := range req.SourcePaths {
		p, herr := h.resolve(sp, u)
		if herr != nil {
			jsonError(w, herr.code, herr.msg)
			return
		}
		if filepath.Clean(p) == filepath.Clean(dst) {
			jsonError(w, http.StatusBadRequest, fmt.Sprintf("source path '%s' is the same as the destination", p))
			return
		}
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR):
			jsonError(w, http.StatusNotFound, fmt.Sprintf("source path '%s' does not exist", p))
			return
		case err != nil:
			jsonError(w, http.StatusInternalServerError, fmt.Sprintf("error checking source path '%s': %v", p, err))
			return
		case !fi.Mode().IsRegular():
			jsonError(w, http.StatusBadRequest, fmt.Sprintf("source path '%s' is not a regular file", p))
			return
		}
		srcs[i] = p
	}
	if herr := concatFiles(dst, srcs, u); herr != nil {
		jsonError(w, herr.code, herr.msg)
		return
	}
	for _, s := range srcs {
		if err := os.Remove(s); err != nil && !errors.Is(err, fs.ErrNotExist) {
			h.log.Warn("compose: could not remove source", zap.String("path", s), zap.Error(err))
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	json.NewEncoder(w).Encode(uploadResult{Path: wireName(dst), Name: wireName(filepath.Base(dst)), Type: "file"})
}

// concatFiles writes srcs in order into a temporary file beside dst, owned
// by u, and renames it over dst. File-to-file copies go through
// (*os.File).ReadFrom, i.e. copy_file_range: the kernel moves the bytes.
func concatFiles(dst string, srcs []string, u *users.User) *httpError {
	id, err := randomUUID()
	if err != nil {
		return errorf(http.StatusInternalServerError, "%v", err)
	}
	// The temporary file is made and renamed relative to dst's directory,
	// resolved as uploads resolve it (placer.go).
	dirfd := -1
	var base, tmp string
	var out *os.File
	err = newPlacer(u).retry(func(pl placer) error {
		if dirfd >= 0 {
			unix.Close(dirfd)
			dirfd = -1
		}
		return pl.do(func() error {
			var err error
			dirfd, base, err = pl.parentAt(dst, true)
			if err != nil {
				return err
			}
			tmp = base + ".e2b-compose." + id + ".tmp"
			fd, err := unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o666)
			if err != nil {
				return pl.wrap("open", filepath.Join(filepath.Dir(dst), tmp), err)
			}
			out = os.NewFile(uintptr(fd), tmp)
			return nil
		})
	})
	if err != nil {
		if dirfd >= 0 {
			unix.Close(dirfd)
		}
		return placeError(err, "error creating temporary file")
	}
	defer unix.Close(dirfd)
	ok := false
	defer func() {
		if !ok {
			out.Close()
			unix.Unlinkat(dirfd, tmp, 0)
		}
	}()
	if err := out.Chown(int(u.UID), int(u.GID)); err != nil {
		return errorf(http.StatusInternalServerError, "error changing ownership: %v", err)
	}
	for _, s := range srcs {
		// Never an open that could block: the source may have been swapped
		// for a FIFO since it was checked.
		in, _, err := openRegular(unix.AT_FDCWD, s, unix.O_RDONLY, false)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return errorf(http.StatusNotFound, "source path '%s' does not exist", s)
			}
			if errors.Is(err, errNotRegular) || errors.Is(err, unix.EISDIR) {
				return errorf(http.StatusBadRequest, "source path '%s' is not a regular file", s)
			}
			return errorf(http.StatusInternalServerError, "error opening source '%s': %v", s, err)
		}
		_, err = out.ReadFrom(in)
		in.Close()
		if err != nil {
			if isNoSpace(err) {
				return errorf(http.StatusInsufficientStorage, "not enough disk space available")
			}
			return errorf(http.StatusInternalServerError, "error copying '%s': %v", s, err)
		}
	}
	if err := out.Close(); err != nil {
		if isNoSpace(err) {
			return errorf(http.StatusInsufficientStorage, "not enough disk space available")
		}
		return errorf(http.StatusInternalServerError, "error closing temporary file: %v", err)
	}
	if err := unix.Renameat(dirfd, tmp, dirfd, base); err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
		ok = true
		return errorf(http.StatusInternalServerError, "error renaming into place: %v", err)
	}
	ok = true
	return nil
}

func randomUUID() (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(randReader, b[:]); err != nil {
		return "", fmt.Errorf("generating uuid: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}

package filesystem

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strings"
)

// malformedBody tells a body that is itself wrong (its chunked framing, its
// gzip stream, its multipart syntax, or cut short) from a connection that
// failed under it: the first answers 400, the second 500.
func malformedBody(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
		return false
	}
	var pe *os.PathError
	return !errors.As(err, &pe) // a file error is ours, not the client's
}

// multipartReader parses a multipart body (RFC 2046) for uploads with the
// same rules as mime/multipart's Reader.NextPart, but streams each part's
// data out of one large window. mime/multipart reads through its own 4 KiB
// bufio.Reader and hands a part out at most 4 KiB per Read, each byte
// copied twice after the socket read: a multipart upload ran at 0.4x the
// speed of the same file sent as application/octet-stream. Here the window
// is filled from the body, the delimiter is searched over all of it (see
// find), and the data before it goes to the file straight from the window:
// one user-space copy and ~1 MiB writes, as for an octet-stream upload.
//
// Deliberate differences from mime/multipart: a part's header block must
// fit in the window (mime/multipart allows 10 MiB); lines outside parts
// may be as long as the window (mime/multipart: 4 KiB) and the boundary a
// quarter of it; a body that ends inside a part's header is an error
// (mime/multipart reports it as the end of the parts).
type multipartReader struct {
	src  io.Reader
	buf  []byte // the window; unread data is buf[r:w]
	r, w int
	err  error // the source's first error; it is not read again after one

	nl               []byte // "\r\n", or "\n" if the first boundary line ends in a bare "\n"
	nlDashBoundary   []byte // nl + "--" + boundary
	dashBoundary     []byte // "--" + boundary
	dashBoundaryDash []byte // "--" + boundary + "--"
	partsRead        int
	cur              *multipartPart

	hdr    *bufio.Reader // reused to parse header blocks with net/textproto
	hdrSrc bytes.Reader

	offsets    [256][]int32 // for each byte, where it occurs in offsetsFor (see find)
	offsetsFor []byte
}

// maxPartHeaders is mime/multipart's default limit on header entries per part.
const maxPartHeaders = 10000

var (
	errMultipartLineTooLong   = errors.New("multipart: line longer than the read buffer")
	errMultipartHeaderTooLong = errors.New("multipart: part header larger than the read buffer")
	errMultipartTooManyHeader = errors.New("multipart: message too large")
)

// newMultipartReader reads src with buf as its window; buf must stay
// untouched until the reader is done with.
func newMultipartReader(src io.Reader, boundary string, buf []byte) *multipartReader {
	b := []byte("\r\n--" + boundary + "--")
	return &multipartReader{
		src:              src,
		buf:              buf,
		nl:               b[:2],
		nlDashBoundary:   b[:len(b)-2],
		dashBoundaryDash: b[2:],
		dashBoundary:     b[2 : len(b)-2],
	}
}

// fill reads more of the source into the window after moving the unread
// data to its front. With all it reads until the window is full (or the
// source fails), so that a part's data reaches the file in large writes;
// otherwise one successful read is enough.
func (m *multipartReader) fill(all bool) {
	if m.r > 0 {
		m.w = copy(m.buf, m.buf[m.r:m.w])
		m.r = 0
	}
	for m.w < len(m.buf) && m.err == nil {
		n, err := m.src.Read(m.buf[m.w:])
		m.w += n
		m.err = err
		if n > 0 && !all {
			return
		}
	}
}

// readLine returns the next line including its "\n" (the bytes are the
// window's, valid until the next call), or what is left with the source's
// error, as bufio.Reader.ReadSlice does.
func (m *multipartReader) readLine() ([]byte, error) {
	scanned := 0
	for {
		if i := bytes.IndexByte(m.buf[m.r+scanned:m.w], '\n'); i >= 0 {
			end := m.r + scanned + i + 1
			line := m.buf[m.r:end]
			m.r = end
			return line, nil
		}
		scanned = m.w - m.r
		if m.err != nil {
			line := m.buf[m.r:m.w]
			m.r = m.w
			return line, m.err
		}
		if scanned == len(m.buf) {
			return nil, errMultipartLineTooLong
		}
		m.fill(false)
	}
}

// nextPart skips the rest of the current part and returns the next one, or
// io.EOF after the final boundary.
func (m *multipartReader) nextPart() (*multipartPart, error) {
	if m.cur != nil {
		err := m.cur.discard()
		m.cur = nil
		if err != nil {
			return nil, fmt.Errorf("multipart: NextPart: %w", err)
		}
	}
	if len(m.dashBoundary) == 2 {
		return nil, errors.New("multipart: boundary is empty")
	}
	// A window must hold a delimiter with room to spare, or a part's data
	// could never be told from a delimiter cut in two.
	if 4*len(m.dashBoundaryDash) > len(m.buf) {
		return nil, errors.New("multipart: boundary is too long")
	}
	expectNewPart := false
	for {
		line, err := m.readLine()
		if err == io.EOF && m.isFinalBoundary(line) {
			// "--boundary--" at the very end, without a line break.
			return nil, io.EOF
		}
		if err != nil {
			return nil, fmt.Errorf("multipart: NextPart: %w", err)
		}
		if m.isBoundaryDelimiterLine(line) {
			m.partsRead++
			hdr, err := m.readHeader()
			if err != nil {
				return nil, err
			}
			p := &multipartPart{mr: m, header: hdr}
			const cte = "Content-Transfer-Encoding"
			if strings.EqualFold(hdr.Get(cte), "quoted-printable") {
				hdr.Del(cte)
				p.quotedPrintable = true
			}
			m.cur = p
			return p, nil
		}
		if m.isFinalBoundary(line) {
			return nil, io.EOF
		}
		if expectNewPart {
			return nil, fmt.Errorf("multipart: expecting a new Part; got line %q", line)
		}
		if m.partsRead == 0 {
			continue // preamble
		}
		// The line break between a part's data and the next delimiter line.
		if bytes.Equal(line, m.nl) {
			expectNewPart = true
			continue
		}
		return nil, fmt.Errorf("multipart: unexpected line in Next(): %q", line)
	}
}

// isFinalBoundary reports whether line is `--boundary--[ \t]*(\r\n)?`.
func (m *multipartReader) isFinalBoundary(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, m.dashBoundaryDash)
	if !ok {
		return false
	}
	rest = bytes.TrimLeft(rest, " \t")
	return len(rest) == 0 || bytes.Equal(rest, m.nl)
}

// isBoundaryDelimiterLine reports whether line is `--boundary[ \t]*` and a
// line break. A first one ending in a bare "\n" switches the reader to
// "\n" line breaks (a violation of the RFC seen in practice).
func (m *multipartReader) isBoundaryDelimiterLine(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, m.dashBoundary)
	if !ok {
		return false
	}
	rest = bytes.TrimLeft(rest, " \t")
	if m.partsRead == 0 && len(rest) == 1 && rest[0] == '\n' {
		m.nl = m.nl[1:]
		m.nlDashBoundary = m.nlDashBoundary[1:]
	}
	return bytes.Equal(rest, m.nl)
}

// readHeader reads a part's header block, which ends at the first empty
// line ("\n" or "\r\n", as net/textproto sees it), and parses it with
// net/textproto.
func (m *multipartReader) readHeader() (textproto.MIMEHeader, error) {
	pos, entries := m.r, 0
	for {
		i := bytes.IndexByte(m.buf[pos:m.w], '\n')
		if i < 0 {
			if m.err != nil {
				err := m.err
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return nil, fmt.Errorf("multipart: reading part header: %w", err)
			}
			if m.w-m.r == len(m.buf) {
				return nil, errMultipartHeaderTooLong
			}
			off := pos - m.r
			m.fill(false)
			pos = m.r + off
			continue
		}
		line := m.buf[pos : pos+i]
		pos += i + 1
		if len(line) == 0 || len(line) == 1 && line[0] == '\r' {
			break
		}
		if line[0] != ' ' && line[0] != '\t' {
			if entries++; entries > maxPartHeaders {
				return nil, errMultipartTooManyHeader
			}
		}
	}
	block := m.buf[m.r:pos]
	m.r = pos
	m.hdrSrc.Reset(block)
	if m.hdr == nil {
		m.hdr = bufio.NewReaderSize(&m.hdrSrc, 4096)
	} else {
		m.hdr.Reset(&m.hdrSrc)
	}
	hdr, err := textproto.NewReader(m.hdr).ReadMIMEHeader()
	if err != nil {
		return nil, err
	}
	return hdr, nil
}

// multipartPart is one part of a multipart body. Its data is read either
// in window-sized pieces with next (the fast path, a bodySource) or through
// Read; not both.
type multipartPart struct {
	mr              *multipartReader
	header          textproto.MIMEHeader
	quotedPrintable bool // Content-Transfer-Encoding: quoted-printable (removed from header)

	total   int64 // data bytes handed out so far
	err     error // io.EOF once the delimiter is reached, or the failure
	pending []byte
}

// next returns the part's next piece of data (valid until the next call),
// with io.EOF once the delimiter that ends the part is reached.
func (p *multipartPart) next() ([]byte, error) {
	if p.err != nil {
		return nil, p.err
	}
	m := p.mr
	for {
		readErr := m.err
		if readErr == io.EOF {
			readErr = io.ErrUnexpectedEOF
		}
		n, err := m.scan(m.buf[m.r:m.w], p.total, readErr)
		if err == nil && m.err == nil && m.w-m.r < len(m.buf) {
			// No delimiter in sight and room for more: read on before
			// handing data out, so the file sees large writes.
			m.fill(true)
			continue
		}
		if n == 0 && err == nil {
			// Unreachable with the window at least 4 delimiters long.
			err = errMultipartLineTooLong
		}
		data := m.buf[m.r : m.r+n]
		m.r += n
		p.total += int64(n)
		p.err = err
		return data, err
	}
}

// Read makes the part an io.Reader (used for quoted-printable parts).
func (p *multipartPart) Read(b []byte) (int, error) {
	if len(p.pending) == 0 {
		if p.err != nil {
			return 0, p.err
		}
		p.pending, _ = p.next()
		if len(p.pending) == 0 {
			return 0, p.err
		}
	}
	n := copy(b, p.pending)
	p.pending = p.pending[n:]
	return n, nil
}

// discard skips to the end of the part.
func (p *multipartPart) discard() error {
	p.pending = nil
	for {
		if _, err := p.next(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// scan tells how much of buf, the unread data of a part, is the part's
// data, and what follows that data: nil (more data may come), io.EOF (the
// delimiter), or readErr (the source failed after buf). total is how much
// data the part has handed out; a part with none may be ended by
// "--boundary" alone (its header's blank line took the line break). These
// are mime/multipart's rules.
func (m *multipartReader) scan(buf []byte, total int64, readErr error) (int, error) {
	if total == 0 {
		if bytes.HasPrefix(buf, m.dashBoundary) {
			switch delimiterEnds(buf, m.dashBoundary, readErr) {
			case -1:
				return len(m.dashBoundary), nil
			case 0:
				return 0, nil
			default:
				return 0, io.EOF
			}
		}
		if bytes.HasPrefix(m.dashBoundary, buf) {
			return 0, readErr
		}
	}
	if i := m.find(buf); i >= 0 {
		switch delimiterEnds(buf[i:], m.nlDashBoundary, readErr) {
		case -1:
			return i + len(m.nlDashBoundary), nil
		case 0:
			return i, nil
		default:
			return i, io.EOF
		}
	}
	if bytes.HasPrefix(m.nlDashBoundary, buf) {
		return 0, readErr
	}
	// Everything before a trailing beginning of a delimiter is data.
	if i := bytes.LastIndexByte(buf, m.nlDashBoundary[0]); i >= 0 && bytes.HasPrefix(m.nlDashBoundary, buf[i:]) {
		return i, nil
	}
	return len(buf), readErr
}

// find returns the index of the first nlDashBoundary in buf, or -1.
//
// bytes.Index looks for the delimiter's first byte with IndexByte and
// checks each hit; in binary data that is a call every 256 bytes, which
// made the search a quarter of a multipart upload's CPU time, and in text
// with CRLF line breaks one every line. Instead, find reads only every
// n-th byte (n = the delimiter's length): a delimiter in buf covers exactly
// one of them. Most bytes of the data do not occur in a 40–70 byte
// delimiter at all; a byte that does gives the few places the delimiter
// could start, which are checked. The reads are independent of each other,
// so they stream, and each starting place is checked at most once: the
// search stays linear whatever the data.
func (m *multipartReader) find(buf []byte) int {
	needle := m.nlDashBoundary
	n := len(needle)
	if n < minSampledSearch {
		return bytes.Index(buf, needle)
	}
	if !bytes.Equal(m.offsetsFor, needle) {
		for c := range m.offsets {
			m.offsets[c] = m.offsets[c][:0]
		}
		// Descending offsets: the candidates of one sampled byte are then
		// tried from the leftmost start.
		for k := n - 1; k >= 0; k-- {
			m.offsets[needle[k]] = append(m.offsets[needle[k]], int32(k))
		}
		m.offsetsFor = needle
	}
	first := needle[0]
	for p := n - 1; p < len(buf); p += n {
		offs := m.offsets[buf[p]]
		for _, k := range offs {
			s := p - int(k)
			if s+n > len(buf) {
				break
			}
			if buf[s] == first && bytes.Equal(buf[s:s+n], needle) {
				return s
			}
		}
	}
	return -1
}

// minSampledSearch is the shortest delimiter worth a sampled search:
// shorter ones mean reading too many samples.
const minSampledSearch = 16

// delimiterEnds decides whether buf, which starts with the delimiter
// prefix, holds a delimiter: +1 if the prefix is followed by "--", space,
// tab, CR, LF or the end of the body; -1 if by anything else ("--foobar" is
// not "--foo"); 0 if more data is needed to tell.
func delimiterEnds(buf, prefix []byte, readErr error) int {
	if len(buf) == len(prefix) {
		if readErr != nil {
			return +1
		}
		return 0
	}
	switch c := buf[len(prefix)]; c {
	case ' ', '\t', '\r', '\n':
		return +1
	case '-':
		if len(buf) == len(prefix)+1 {
			if readErr != nil {
				return -1
			}
			return 0
		}
		if buf[len(prefix)+1] == '-' {
			return +1
		}
	}
	return -1
}

package handoff

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// maxLine bounds a chunk-size or trailer line; net/http refuses longer ones
// too, and a connection whose framing we cannot follow is never returned.
const maxLine = 4096

type frameState int

const (
	stCount     frameState = iota // head or a counted body / chunk: remaining bytes
	stChunkLine                   // a chunk-size line
	stChunkCRLF                   // the line end after a chunk's data
	stTrailer                     // trailer lines up to an empty one
	stDone                        // the request has been read whole
	stLost                        // framing not understood: pass everything, never return
)

// Conn is a handed-off client connection. It embeds the *net.TCPConn so
// net/http still finds ReadFrom (sendfile) on it, but reads give the HTTP
// server exactly one request: bytes beyond it stay here and go back to
// envd-init with the connection.
type Conn struct {
	*net.TCPConn
	// Extra are response headers envd-init decided (CORS).
	Extra http.Header

	ctl *net.UnixConn // the handoff's own connection to envd-init

	// framing; only the HTTP server's reading goroutine touches these
	pending   []byte // bytes read from the socket (or envd-init) not passed on yet
	state     frameState
	next      frameState // state after a counted stretch
	remaining int64
	body      int64 // Framing.Body, for after the head
	line      []byte

	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{} // closed and replaced on deadline change
	returned chan struct{} // closed once the connection went back
	gone     bool          // returned or reported closed
}

func newConn(tcp *net.TCPConn, ctl *net.UnixConn, extra http.Header, f Framing, prefix []byte) *Conn {
	c := &Conn{TCPConn: tcp, Extra: extra, ctl: ctl, pending: prefix,
		state: stCount, remaining: int64(f.Head), body: f.Body,
		wake: make(chan struct{}), returned: make(chan struct{})}
	c.afterHead()
	return c
}

// afterHead sets what follows the head once it is passed on.
func (c *Conn) afterHead() {
	switch {
	case c.body == Chunked:
		c.next = stChunkLine
	case c.body > 0:
		c.next = stCount
	default:
		c.next = stDone
	}
}

func (c *Conn) Read(p []byte) (int, error) {
	for {
		switch c.state {
		case stDone:
			return 0, c.waitReturned()
		case stCount:
			if c.remaining == 0 {
				c.finishCount()
				continue
			}
		}
		if len(p) == 0 {
			return 0, nil
		}
		if len(c.pending) > 0 {
			k := c.advance(c.pending[:min(len(p), len(c.pending))])
			copy(p, c.pending[:k])
			c.pending = c.pending[k:]
			if k > 0 {
				return k, nil
			}
			continue
		}
		q := p
		if c.state == stCount && c.remaining < int64(len(q)) {
			// Never read past a counted stretch: what follows may be the
			// client's next request.
			q = q[:c.remaining]
		}
		n, err := c.TCPConn.Read(q)
		if n == 0 {
			return 0, err
		}
		k := c.advance(q[:n])
		if k < n {
			c.pending = append(c.pending, q[k:n]...)
		}
		if k > 0 {
			return k, nil
		}
	}
}

// finishCount moves on from a counted stretch that is complete.
func (c *Conn) finishCount() {
	switch c.next {
	case stCount: // the head is done, a counted body follows
		c.remaining, c.next = c.body, stDone
		c.body = 0
	case stChunkLine:
		c.state, c.line = stChunkLine, c.line[:0]
		return
	default:
		c.state = c.next
		return
	}
	if c.remaining == 0 {
		c.state = stDone
	}
}

// advance consumes the prefix of b that belongs to the request and
// reports its length; framing states change as it goes.
func (c *Conn) advance(b []byte) int {
	k := 0
	for k < len(b) {
		switch c.state {
		case stLost:
			return len(b)
		case stDone:
			return k
		case stCount:
			if c.remaining == 0 {
				c.finishCount()
				continue
			}
			n := min(int64(len(b)-k), c.remaining)
			k += int(n)
			c.remaining -= n
		case stChunkLine, stChunkCRLF, stTrailer:
			i := bytes.IndexByte(b[k:], '\n')
			if i < 0 {
				c.line = append(c.line, b[k:]...)
				if len(c.line) > maxLine {
					c.state = stLost
				}
				return len(b)
			}
			c.line = append(c.line, b[k:k+i+1]...)
			k += i + 1
			c.endLine()
			c.line = c.line[:0]
		}
	}
	return k
}

// endLine acts on a complete chunk-size, CRLF or trailer line.
func (c *Conn) endLine() {
	line := bytes.TrimRight(c.line, "\r\n")
	switch c.state {
	case stChunkLine:
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		size, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 16, 63)
		switch {
		case err != nil:
			c.state = stLost
		case size == 0:
			c.state = stTrailer
		default:
			c.state, c.remaining, c.next = stCount, int64(size), stChunkCRLF
		}
	case stChunkCRLF:
		if len(line) != 0 {
			c.state = stLost
			return
		}
		c.state = stChunkLine
	case stTrailer:
		if len(line) == 0 {
			c.state = stDone
		}
	}
}

// waitReturned blocks a read past the request (net/http's background
// read) until the read deadline or until the connection went back.
func (c *Conn) waitReturned() error {
	for {
		c.mu.Lock()
		dl, wake := c.deadline, c.wake
		c.mu.Unlock()
		var timeout <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			timeout = t.C
		}
		var err error
		select {
		case <-c.returned:
			err = io.EOF
		case <-timeout:
			err = os.ErrDeadlineExceeded
		case <-wake:
		}
		if t != nil {
			t.Stop()
		}
		if err != nil {
			return err
		}
	}
}

// SetReadDeadline also wakes a read that waits past the request.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.TCPConn.SetReadDeadline(t)
}

// SetDeadline also wakes a read that waits past the request.
func (c *Conn) SetDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.TCPConn.SetDeadline(t)
}

func (c *Conn) setDeadline(t time.Time) {
	c.mu.Lock()
	c.deadline = t
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
}

// giveBack returns the connection to envd-init with the bytes read beyond
// the request; the HTTP server's next read then ends it here.
func (c *Conn) giveBack() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone {
		return
	}
	c.gone = true
	if c.state == stDone && len(c.pending) < MaxMessage-1 {
		_, _ = c.ctl.Write(append([]byte{msgKeep}, c.pending...))
		close(c.returned)
	} else {
		// Framing lost, or too much read ahead to return: end it.
		_ = c.TCPConn.CloseRead()
		_ = c.TCPConn.CloseWrite()
		close(c.returned)
	}
	_ = c.ctl.Close()
}

// Close closes this process's copy of the socket. A connection not given
// back is reported closed, and envd-init closes its copy too.
func (c *Conn) Close() error {
	c.mu.Lock()
	if !c.gone {
		c.gone = true
		_, _ = c.ctl.Write([]byte{msgClose})
		_ = c.ctl.Close()
	}
	c.mu.Unlock()
	err := c.TCPConn.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

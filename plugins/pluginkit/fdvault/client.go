package fdvault

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ackTimeout bounds a request that waits for the vault's answer: a vault
// that does not answer must not hold a process's end event for long.
const ackTimeout = 2 * time.Second

// fetchTimeout bounds the take-over at start. It is long: an envd-proc
// restarting after the OOM killer took it may be slow, and a fetch given up
// on would leave the vault sending every process to a plugin that no longer
// waits for them (they would block once their pipes fill).
const fetchTimeout = 60 * time.Second

// Adopted is one process handed over by the vault.
type Adopted struct {
	Rec   Record
	Files []*os.File // as deposited: [pidfd, ...]; none when Released
}

// Client is envd-proc's end of the vault.
type Client struct {
	log  *zap.Logger
	conn *Conn

	wmu sync.Mutex // one Send at a time

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan *Msg
	fetched []Adopted
	onExit  func(pid uint32, status int32)
	early   map[uint32]int32 // exits pushed before onExit was set
	dead    bool
}

// Open connects to the vault named by $ENVD_VAULT_FD; (nil, nil) when there
// is none (standalone, or a plugin started by hand).
func Open(log *zap.Logger) (*Client, error) {
	v := os.Getenv(EnvFD)
	if v == "" {
		return nil, nil
	}
	os.Unsetenv(EnvFD) // user processes inherit our environment's copy otherwise
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("fdvault: bad %s=%q", EnvFD, v)
	}
	// Inherited without close-on-exec: user processes must not get it.
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "fdvault")
	conn, err := NewConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	return NewClient(log, conn), nil
}

// NewClient serves the plugin's end of a vault socket.
func NewClient(log *zap.Logger, conn *Conn) *Client {
	c := &Client{log: log, conn: conn, pending: map[uint64]chan *Msg{}, early: map[uint32]int32{}}
	go c.read()
	return c
}

func (c *Client) read() {
	var records []Adopted
	for {
		m, files, err := c.conn.Recv()
		if err != nil {
			c.log.Warn("fd vault connection lost", zap.Error(err))
			c.mu.Lock()
			c.dead = true
			for id, ch := range c.pending {
				close(ch)
				delete(c.pending, id)
			}
			c.mu.Unlock()
			return
		}
		switch m.Op {
		case OpRecord:
			if m.Rec != nil {
				records = append(records, Adopted{Rec: *m.Rec, Files: files})
				continue
			}
		case OpExit:
			c.mu.Lock()
			fn := c.onExit
			if fn == nil {
				c.early[m.Pid] = m.Status
			}
			c.mu.Unlock()
			if fn != nil {
				fn(m.Pid, m.Status)
			}
		case OpAck:
			c.mu.Lock()
			if records != nil {
				c.fetched, records = records, nil
			}
			ch := c.pending[m.ID]
			delete(c.pending, m.ID)
			c.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		}
		for _, f := range files {
			f.Close()
		}
	}
}

// OnExit sets the receiver of envd-init's reaps of adopted processes;
// exits pushed before it was set are delivered at once.
func (c *Client) OnExit(fn func(pid uint32, status int32)) {
	c.mu.Lock()
	c.onExit = fn
	early := c.early
	c.early = nil
	c.mu.Unlock()
	for pid, st := range early {
		fn(pid, st)
	}
}

func (c *Client) send(m *Msg, fds []int) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.conn.Send(m, fds)
}

// call sends m and waits for its ack.
func (c *Client) call(m *Msg, fds []int) (*Msg, error) {
	ch := make(chan *Msg, 1)
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return nil, errors.New("fdvault: connection lost")
	}
	c.nextID++
	m.ID = c.nextID
	c.pending[m.ID] = ch
	c.mu.Unlock()
	if err := c.send(m, fds); err != nil {
		c.mu.Lock()
		delete(c.pending, m.ID)
		c.mu.Unlock()
		return nil, err
	}
	wait := ackTimeout
	if m.Op == OpFetch {
		wait = fetchTimeout
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case a, ok := <-ch:
		if !ok {
			return nil, errors.New("fdvault: connection lost")
		}
		if a.Err != "" {
			return a, fmt.Errorf("fdvault: %s: %s", m.Op, a.Err)
		}
		return a, nil
	case <-t.C:
		c.mu.Lock()
		delete(c.pending, m.ID)
		c.mu.Unlock()
		return nil, fmt.Errorf("fdvault: %s: no answer in %v", m.Op, wait)
	}
}

// Fetch takes over every process the vault keeps.
func (c *Client) Fetch() ([]Adopted, error) {
	if _, err := c.call(&Msg{Op: OpFetch}, nil); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.fetched
	c.fetched = nil
	return out, nil
}

// Deposit hands the vault a record and the fds listed in Record's doc. It
// does not wait: the socket keeps messages in order, so an OpExiting sent
// later is always seen after it.
func (c *Client) Deposit(rec *Record, files []*os.File) error {
	fds, err := FDs(files)
	if err != nil {
		return err
	}
	err = c.send(&Msg{Op: OpDeposit, Pid: rec.Pid, Rec: rec}, fds)
	if err != nil && rec.Config != nil {
		// Too big (a huge environment): keep the process, not its config.
		small := *rec
		small.Config = nil
		err = c.send(&Msg{Op: OpDeposit, Pid: rec.Pid, Rec: &small}, fds)
	}
	return err
}

// Exiting tells the vault that pid ended with the wait status. Once it
// returns the message is queued in order, and the caller may reap the pid.
func (c *Client) Exiting(pid uint32, seq uint64, status int32) error {
	return c.send(&Msg{Op: OpExiting, Pid: pid, Seq: seq, Status: status}, nil)
}

// Forget tells the vault to drop pid's record (start seq) and its fds: the
// process could not be adopted and was ended.
func (c *Client) Forget(pid uint32, seq uint64) error {
	return c.send(&Msg{Op: OpForget, Pid: pid, Seq: seq}, nil)
}

// Sync returns once the vault has handled every earlier message.
func (c *Client) Sync() error {
	_, err := c.call(&Msg{Op: OpSync}, nil)
	return err
}

// CloseStdin closes the vault's copy of pid's stdin pipe.
func (c *Client) CloseStdin(pid uint32) error {
	_, err := c.call(&Msg{Op: OpCloseStdin, Pid: pid}, nil)
	return err
}

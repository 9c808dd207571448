// Package vault (runs in envd-init) keeps what user processes need to
// outlive envd-proc (ARCHITECTURE principle 4): a record of each process
// envd-proc started, duplicates of the fds it holds for it (pidfd, PTY
// master, pipe ends), and the exit status of those that envd-init reaped
// while no envd-proc was there. The fds it holds are why a crash or a swap
// of envd-proc costs a user process nothing: its pipe keeps a reader (no
// SIGPIPE), its terminal keeps a master (no SIGHUP), and what it writes
// meanwhile waits in the kernel buffer for the next envd-proc, which takes
// everything over (fdvault.OpFetch).
//
// It also counts the client streams envd-init's proxy holds open per
// process, so the next envd-proc can wait for them to re-attach before it
// reads that process's output again.
//
// The wire is package fdvault; each plugin start gets its own socket pair.
package vault

import (
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/envd-project/envd/plugins/pluginkit/fdvault"
)

// retention is how long the status of an ended process is kept (WIRE
// §5.2: Connect finds a process that exited in the last 30 s).
const retention = 30 * time.Second

type record struct {
	fdvault.Record
	files  []*os.File // [pidfd, ...]; nil once released
	expiry *time.Timer
}

// Vault is envd-init's side. Use New.
type Vault struct {
	log    *zap.Logger
	retain time.Duration

	mu      sync.Mutex
	recs    map[uint32]*record
	streams map[uint32]int
	current *peer // the plugin that fetched last; it gets OpExit pushes
	closed  bool
}

// peer is one plugin start's socket. Everything the vault sends it goes
// through its queue, written by one goroutine: a plugin that stops reading
// (SIGSTOP, a frozen cgroup) then blocks only that goroutine, never the
// vault's lock, so envd-init's reaper (Reaped) never waits for a plugin.
// Messages queued under v.mu keep the order they were queued in: a
// record always reaches the plugin before an exit of its process.
type peer struct {
	conn *fdvault.Conn
	log  *zap.Logger

	mu    sync.Mutex
	queue []outMsg
	gone  bool          // the socket is closed: push drops what it gets
	wake  chan struct{} // a push for the writer; capacity 1
}

// outMsg is one queued message and the fds it carries, which the queue
// owns (duplicates: the record's own may close before the send).
type outMsg struct {
	m     *fdvault.Msg
	files []*os.File
}

func newPeer(conn *fdvault.Conn, log *zap.Logger) *peer {
	return &peer{conn: conn, log: log, wake: make(chan struct{}, 1)}
}

// push queues m; it never blocks.
func (p *peer) push(m *fdvault.Msg, files []*os.File) {
	p.mu.Lock()
	if p.gone {
		p.mu.Unlock()
		closeFiles(files)
		return
	}
	p.queue = append(p.queue, outMsg{m: m, files: files})
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// write sends the queue in order until the socket fails or close.
func (p *peer) write() {
	for {
		p.mu.Lock()
		q, gone := p.queue, p.gone
		p.queue = nil
		p.mu.Unlock()
		if gone {
			for _, o := range q {
				closeFiles(o.files)
			}
			return
		}
		if len(q) == 0 {
			<-p.wake
			continue
		}
		for i, o := range q {
			err := p.send(o)
			closeFiles(o.files)
			if err != nil {
				p.log.Debug("vault send", zap.String("op", o.m.Op), zap.Error(err))
				for _, rest := range q[i+1:] {
					closeFiles(rest.files)
				}
				// Ends serve's Recv, which drops the peer.
				p.close()
				return
			}
		}
	}
}

func (p *peer) send(o outMsg) error {
	fds, err := fdvault.FDs(o.files)
	if err != nil {
		return err
	}
	return p.conn.Send(o.m, fds)
}

// close closes the socket (a blocked send returns) and ends the writer.
func (p *peer) close() {
	p.mu.Lock()
	p.gone = true
	q := p.queue
	p.queue = nil
	p.mu.Unlock()
	for _, o := range q {
		closeFiles(o.files)
	}
	p.conn.Close()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// New returns an empty vault.
func New(log *zap.Logger) *Vault {
	return &Vault{log: log, retain: retention, recs: map[uint32]*record{}, streams: map[uint32]int{}}
}

// Connect makes a socket for one plugin start: the returned file goes to
// the plugin (inherited, named by fdvault.EnvFD); the caller closes its
// copy once the plugin has started.
func (v *Vault) Connect() (*os.File, error) {
	conn, theirs, err := fdvault.Pair()
	if err != nil {
		return nil, err
	}
	p := newPeer(conn, v.log)
	go p.write()
	go v.serve(p)
	return theirs, nil
}

func (v *Vault) serve(p *peer) {
	defer func() {
		p.close()
		v.mu.Lock()
		if v.current == p {
			v.current = nil
		}
		v.mu.Unlock()
	}()
	for {
		m, files, err := p.conn.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				v.log.Debug("vault peer gone", zap.Error(err))
			}
			return
		}
		ack := &fdvault.Msg{Op: fdvault.OpAck, ID: m.ID}
		switch m.Op {
		case fdvault.OpDeposit:
			v.deposit(m.Rec, files)
			continue // no ack: deposits do not wait
		case fdvault.OpExiting:
			closeFiles(files)
			v.exiting(p, m.Pid, m.Seq, m.Status)
			continue // not acknowledged
		case fdvault.OpForget:
			closeFiles(files)
			v.forget(m.Pid, m.Seq)
			continue // not acknowledged
		case fdvault.OpSync:
		case fdvault.OpCloseStdin:
			v.closeStdin(m.Pid)
		case fdvault.OpFetch:
			closeFiles(files)
			if err := v.fetch(p, m.ID); err != nil {
				v.log.Warn("vault fetch", zap.Error(err))
				return
			}
			continue // fetch queued its ack after the records
		default:
			ack.Err = "unknown op " + m.Op
		}
		for _, f := range files {
			f.Close()
		}
		p.push(ack, nil)
	}
}

func (v *Vault) deposit(rec *fdvault.Record, files []*os.File) {
	if rec == nil || len(files) == 0 {
		for _, f := range files {
			f.Close()
		}
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		for _, f := range files {
			f.Close()
		}
		return
	}
	if old := v.recs[rec.Pid]; old != nil {
		// The pid was recycled: the old record's process is long gone.
		old.drop()
	}
	r := &record{Record: *rec, files: files}
	r.Reaped, r.Released, r.Status = false, false, 0
	v.recs[rec.Pid] = r
}

// exiting: the plugin saw the process end; it keeps only the status now.
func (v *Vault) exiting(from *peer, pid uint32, seq uint64, status int32) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r := v.recs[pid]
	// A different seq: the pid was reused by a later Start while this end
	// was on its way (an adopted process whose output outlived it); the
	// record is the new process's and stays.
	if r == nil || r.Released || (seq != 0 && r.Seq != seq) {
		return
	}
	r.Released, r.Status = true, status
	if cur := v.current; cur != nil && cur != from && !r.Reaped {
		// A plugin being replaced reaped a process its successor already
		// adopted (it ended during the swap): the successor learns it here,
		// as envd-init's reaper will never see it.
		cur.push(&fdvault.Msg{Op: fdvault.OpExit, Pid: pid, Status: status}, nil)
	}
	r.Stdin = false
	for _, f := range r.files {
		f.Close()
	}
	r.files = nil
	r.expiry = time.AfterFunc(v.retain, func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		if v.recs[pid] == r {
			delete(v.recs, pid)
		}
	})
}

// forget drops a record a take-over plugin could not adopt: nobody would
// ever read its fds again.
func (v *Vault) forget(pid uint32, seq uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r := v.recs[pid]
	if r == nil || r.Seq != seq {
		return // the pid names a later start now
	}
	r.drop()
	delete(v.recs, pid)
}

func (v *Vault) closeStdin(pid uint32) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r := v.recs[pid]
	if r == nil || !r.Stdin || r.PTY {
		return
	}
	// Pipe mode: [pidfd, stdout, stderr, stdin].
	if len(r.files) == 4 {
		r.files[3].Close()
		r.files = r.files[:3]
	}
	r.Stdin = false
}

// fetch queues every record for p, then the ack of request id, and makes
// p the receiver of exits. It sends nothing itself (see peer): it only
// duplicates the fds, under v.mu, so that each exit queued for p later
// follows the record of its process.
func (v *Vault) fetch(p *peer, id uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]outMsg, 0, len(v.recs)+1)
	for _, r := range v.recs {
		rec := r.Record
		rec.Streams = v.streams[r.Pid]
		files, err := fdvault.Dup(r.files)
		if err != nil {
			for _, o := range out {
				closeFiles(o.files)
			}
			return err
		}
		out = append(out, outMsg{m: &fdvault.Msg{Op: fdvault.OpRecord, Pid: r.Pid, Rec: &rec}, files: files})
	}
	for _, o := range out {
		p.push(o.m, o.files)
	}
	p.push(&fdvault.Msg{Op: fdvault.OpAck, ID: id}, nil)
	v.current = p
	return nil
}

// Reaped is the reaper's hook for a child nobody started through it: an
// orphan. It reports whether pid was a deposited user process; its status
// is then kept and pushed to the current envd-proc.
func (v *Vault) Reaped(pid int, ws unix.WaitStatus) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	r := v.recs[uint32(pid)]
	// A released record was reaped by its plugin: a reap of the same pid
	// now is another process's.
	if r == nil || r.Released || r.Reaped {
		return false
	}
	r.Reaped, r.Status = true, int32(ws)
	if v.current != nil {
		// Queued: a plugin that stopped reading must not stall the reaper.
		v.current.push(&fdvault.Msg{Op: fdvault.OpExit, Pid: uint32(pid), Status: int32(ws)}, nil)
	}
	return true
}

// Attach counts a client stream the proxy holds open for pid; the returned
// func uncounts it.
func (v *Vault) Attach(pid uint32) func() {
	v.mu.Lock()
	v.streams[pid]++
	v.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			v.mu.Lock()
			defer v.mu.Unlock()
			if v.streams[pid]--; v.streams[pid] <= 0 {
				delete(v.streams, pid)
			}
		})
	}
}

// Len is the number of kept records (tests, metrics).
func (v *Vault) Len() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.recs)
}

// Close drops every record and fd (envd-init is stopping).
func (v *Vault) Close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.closed = true
	for pid, r := range v.recs {
		r.drop()
		delete(v.recs, pid)
	}
}

func (r *record) drop() {
	if r.expiry != nil {
		r.expiry.Stop()
	}
	for _, f := range r.files {
		f.Close()
	}
	r.files = nil
}

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

type peer struct {
	conn *fdvault.Conn
	wmu  sync.Mutex
}

func (p *peer) send(m *fdvault.Msg, files []*os.File) error {
	fds, err := fdvault.FDs(files)
	if err != nil {
		return err
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.conn.Send(m, fds)
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
	p := &peer{conn: conn}
	go v.serve(p)
	return theirs, nil
}

func (v *Vault) serve(p *peer) {
	defer func() {
		p.conn.Close()
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
			v.exiting(p, m.Pid, m.Seq, m.Status)
			continue // not acknowledged
		case fdvault.OpSync:
		case fdvault.OpCloseStdin:
			v.closeStdin(m.Pid)
		case fdvault.OpFetch:
			if err := v.fetch(p); err != nil {
				v.log.Warn("vault fetch", zap.Error(err))
				return
			}
		default:
			ack.Err = "unknown op " + m.Op
		}
		for _, f := range files {
			f.Close()
		}
		if err := p.send(ack, nil); err != nil {
			v.log.Debug("vault ack", zap.Error(err))
			return
		}
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
		m := &fdvault.Msg{Op: fdvault.OpExit, Pid: pid, Status: status}
		go func() {
			if err := cur.send(m, nil); err != nil {
				v.log.Debug("vault exit push", zap.Error(err))
			}
		}()
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

// fetch sends every record to p, which becomes the receiver of exits.
func (v *Vault) fetch(p *peer) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, r := range v.recs {
		rec := r.Record
		rec.Streams = v.streams[r.Pid]
		if err := p.send(&fdvault.Msg{Op: fdvault.OpRecord, Pid: r.Pid, Rec: &rec}, r.files); err != nil {
			return err
		}
	}
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
		p := v.current
		m := &fdvault.Msg{Op: fdvault.OpExit, Pid: uint32(pid), Status: int32(ws)}
		// Not under v.mu: a plugin that stopped reading must not stall the reaper.
		go func() {
			if err := p.send(m, nil); err != nil {
				v.log.Debug("vault exit push", zap.Error(err))
			}
		}()
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

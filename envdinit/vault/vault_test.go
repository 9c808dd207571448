package vault

import (
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/envd-project/envd/plugins/pluginkit/fdvault"
)

func client(t testing.TB, v *Vault) *fdvault.Client {
	t.Helper()
	f, err := v.Connect()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := fdvault.NewConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c := fdvault.NewClient(zap.NewNop(), conn)
	t.Cleanup(func() { conn.Close() })
	return c
}

// A deposited pipe outlives the plugin that deposited it: the next plugin
// fetches a read end that still carries what was written meanwhile, the
// status envd-init's reaper took, and the count of streams to re-attach.
func TestDepositSurvivesThePlugin(t *testing.T) {
	v := New(zap.NewNop())
	defer v.Close()
	first := client(t, v)

	cmd := exec.Command("/bin/sh", "-c", "exit 3")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	pidfdNum, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Skipf("no pidfd: %v", err)
	}
	pidfd := os.NewFile(uintptr(pidfdNum), "pidfd")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r2, w2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	tag := "t"
	if err := first.Deposit(&fdvault.Record{Pid: uint32(pid), Seq: 4, Tag: &tag}, []*os.File{pidfd, r, r2}); err != nil {
		t.Fatal(err)
	}
	// The plugin's own copies go, as when it dies.
	pidfd.Close()
	r.Close()
	r2.Close()
	detach := v.Attach(uint32(pid))
	if _, err := w.Write([]byte("kept")); err != nil {
		t.Fatalf("write after the reader's plugin closed it: %v", err)
	}
	w.Close()
	w2.Close()
	// The reaper of envd-init (here: this test) takes the exit.
	var ws syscall.WaitStatus
	for {
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != syscall.EINTR {
			break
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for v.Len() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // the deposit is not acknowledged
	}
	if !v.Reaped(pid, unix.WaitStatus(ws)) {
		t.Fatal("the vault did not know the reaped pid")
	}

	next := client(t, v)
	got, err := next.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("fetched %d records", len(got))
	}
	rec := got[0].Rec
	if rec.Pid != uint32(pid) || rec.Seq != 4 || rec.Tag == nil || *rec.Tag != "t" || !rec.Reaped || unix.WaitStatus(rec.Status).ExitStatus() != 3 || rec.Streams != 1 {
		t.Fatalf("record %+v", rec)
	}
	if len(got[0].Files) != 3 {
		t.Fatalf("%d fds", len(got[0].Files))
	}
	b, err := io.ReadAll(got[0].Files[1])
	if err != nil || string(b) != "kept" {
		t.Fatalf("read %q, %v", b, err)
	}
	detach()
	// The end of an earlier start of the same pid (an adopted process whose
	// end arrives after the pid was reused) leaves this record alone.
	if err := next.Exiting(uint32(pid), rec.Seq-1, 0); err != nil {
		t.Fatal(err)
	}
	if err := next.Sync(); err != nil {
		t.Fatal(err)
	}
	stale, err := client(t, v).Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) != 1 || stale[0].Rec.Released || len(stale[0].Files) != 3 {
		t.Fatalf("a stale exit released the record: %+v, %d fds", stale[0].Rec, len(stale[0].Files))
	}
	for _, f := range stale[0].Files {
		f.Close()
	}
	// Once the plugin says the process ended, only the status is kept.
	if err := next.Exiting(uint32(pid), rec.Seq, rec.Status); err != nil {
		t.Fatal(err)
	}
	if err := next.Sync(); err != nil {
		t.Fatal(err)
	}
	again, err := client(t, v).Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 || !again[0].Rec.Released || len(again[0].Files) != 0 || again[0].Rec.Streams != 0 {
		t.Fatalf("after exiting: %+v", again)
	}
	// A later reap of the same pid is another process's.
	if v.Reaped(pid, 0) {
		t.Fatal("a released record took a reap")
	}
}

type bench struct {
	b      *testing.B
	v      *Vault
	c      *fdvault.Client
	r, r2  *os.File
	cfg    []byte
	closer []*os.File
}

func newBench(b *testing.B) *bench {
	v := New(zap.NewNop())
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	r2, w2, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	bn := &bench{b: b, v: v, c: client(b, v), r: r, r2: r2, cfg: make([]byte, 160), closer: []*os.File{r, w, r2, w2}}
	b.Cleanup(func() {
		v.Close()
		for _, f := range bn.closer {
			f.Close()
		}
	})
	return bn
}

// deposit is what a Start adds: a pidfd and a record with three fds (a
// typical config: a shell command with a few environment variables).
func (bn *bench) deposit(pid uint32) {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		bn.b.Skipf("no pidfd: %v", err)
	}
	pidfd := os.NewFile(uintptr(fd), "pidfd")
	if err := bn.c.Deposit(&fdvault.Record{Pid: pid, Config: bn.cfg}, []*os.File{pidfd, bn.r, bn.r2}); err != nil {
		bn.b.Fatal(err)
	}
	pidfd.Close()
}

// BenchmarkDeposit is the time a Start spends on keeping its process (the
// deposit is not acknowledged: the Start does not wait for envd-init; the
// vault takes each one in before the next, as Starts come one by one).
func BenchmarkDeposit(b *testing.B) {
	bn := newBench(b)
	for i := 0; i < b.N; i++ {
		bn.deposit(uint32(i + 1))
		b.StopTimer()
		if err := bn.c.Sync(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	if err := bn.c.Sync(); err != nil { // all taken in
		b.Fatal(err)
	}
}

// BenchmarkExiting is the time a process's end spends telling the vault
// (one message, before the reap).
func BenchmarkExiting(b *testing.B) {
	bn := newBench(b)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		bn.deposit(uint32(i + 1))
		b.StartTimer()
		if err := bn.c.Exiting(uint32(i+1), 0, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := bn.c.Sync(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRecordMemory reports the envd-init heap one kept process costs
// (its fds' kernel objects exist anyway; envd-init holds 3-4 references).
func BenchmarkRecordMemory(b *testing.B) {
	bn := newBench(b)
	const n = 1000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 1; i <= n; i++ {
		bn.deposit(uint32(i))
	}
	if err := bn.c.Sync(); err != nil { // all taken in
		b.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if bn.v.Len() != n {
		b.Fatalf("%d records kept", bn.v.Len())
	}
	for i := 0; i < b.N; i++ {
	}
	b.ReportMetric((float64(after.HeapAlloc)-float64(before.HeapAlloc))/n, "heapB/record")
}

package ports

// Figures for issue 5, run as root with
//   go test -run XXX -bench . ./plugins/ports/
// (add -benchtime=20x to BenchmarkTimeToReachable for more samples at 1 s).

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"time"

	"testing"
)

// BenchmarkTimeToReachable measures the time from listen() on 127.0.0.1 in
// the vm namespace to the first echoed byte through 169.254.0.21 from the
// host namespace. Each sample starts at a random phase of the scan interval,
// which dominates: expect about half of it on average and all of it at worst.
// Every run takes at least minSamples samples (about 10 s at 1 s).
func BenchmarkTimeToReachable(b *testing.B) {
	for _, tc := range []struct {
		interval   time.Duration
		minSamples int
	}{{time.Second, 10}, {100 * time.Millisecond, 20}, {10 * time.Millisecond, 50}} {
		b.Run("interval="+tc.interval.String(), func(b *testing.B) {
			n := newNetns(b)
			h := n.startHelper(b, Options{Interval: tc.interval, ExternalAddrs: []netip.Addr{vmAddr4}})
			var total, worst time.Duration
			samples := max(b.N, tc.minSamples)
			for range samples {
				time.Sleep(rand.N(tc.interval))
				p, listened := h.listen("127.0.0.1:0")
				addr := hostPort(vmAddr4, p)
				deadline := time.Now().Add(max(10*tc.interval, 5*time.Second))
				for n.reach(addr) != nil {
					if time.Now().After(deadline) {
						b.Fatalf("%s not reachable within %v", addr, 10*tc.interval)
					}
					time.Sleep(500 * time.Microsecond)
				}
				d := time.Since(listened)
				total += d
				worst = max(worst, d)
				h.do("close %d", p)
			}
			b.ReportMetric(float64(total.Microseconds())/1e3/float64(samples), "ms-to-reachable")
			b.ReportMetric(float64(worst.Microseconds())/1e3, "ms-worst")
			b.ReportMetric(float64(samples), "samples")
		})
	}
}

// BenchmarkThroughput compares one connection through the forwarder (host
// ns → 169.254.0.21:p → relay → 127.0.0.1:p) with one straight to a server
// bound on 169.254.0.21 in the same namespaces, in both directions.
func BenchmarkThroughput(b *testing.B) {
	n := newNetns(b)
	h := n.startHelper(b, Options{Interval: 20 * time.Millisecond, ExternalAddrs: []netip.Addr{vmAddr4}})
	pf, _ := h.listen("127.0.0.1:0")
	pd, _ := h.listen(hostPort(vmAddr4, 0))
	forwarded := hostPort(vmAddr4, pf)
	waitFor(b, "forward up", 10*time.Second, func() error { return n.reach(forwarded) })
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	for _, tc := range []struct{ name, addr string }{
		{"direct", hostPort(vmAddr4, pd)},
		{"forwarded", forwarded},
	} {
		b.Run(tc.name+"/upload", func(b *testing.B) {
			c, err := n.dial(tc.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte{'s'}); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(chunk)
			var sent int64
			for b.Loop() {
				k, err := c.Write(buf)
				sent += int64(k)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			c.CloseWrite()
			var got int64
			if err := binary.Read(c, binary.BigEndian, &got); err != nil || got != sent {
				b.Fatalf("server counted %d bytes, sent %d: %v", got, sent, err)
			}
		})
		b.Run(tc.name+"/download", func(b *testing.B) {
			c, err := n.dial(tc.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			req := []byte{'g', 0, 0, 0, 0, 0, 0, 0, 0}
			binary.BigEndian.PutUint64(req[1:], 1<<62)
			if _, err := c.Write(req); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(chunk)
			for b.Loop() {
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			// Chunks are multiples of the server's 64 KiB pattern block.
			for i := range 1024 {
				if buf[i] != pattern(int64(i)) {
					b.Fatalf("byte %d: got %d, want %d", i, buf[i], pattern(int64(i)))
				}
			}
		})
	}
}

// BenchmarkMemoryPerForward measures what one idle forward costs in the
// envd-net process: 200 loopback listeners are forwarded at once, and the
// growth of goroutines, heap, stacks and fds is divided by 200.
func BenchmarkMemoryPerForward(b *testing.B) {
	n := newNetns(b)
	h := n.startHelper(b, Options{Interval: 20 * time.Millisecond, ExternalAddrs: []netip.Addr{vmAddr4}})
	const forwards = 200
	var sum forwardCost
	runs := 0
	for b.Loop() {
		var c forwardCost
		if err := json.Unmarshal([]byte(h.do("mem %d", forwards)), &c); err != nil {
			b.Fatal(err)
		}
		sum.GoroutinesPerFwd += c.GoroutinesPerFwd
		sum.HeapBytesPerFwd += c.HeapBytesPerFwd
		sum.StackBytesPerFwd += c.StackBytesPerFwd
		sum.FDsPerFwd += c.FDsPerFwd
		runs++
		// Let the forwards of this run go before the next one measures.
		waitFor(b, "forwards removed", 10*time.Second, func() error {
			if fw := h.forwards(); len(fw) != 0 {
				return fmt.Errorf("%d forwards left", len(fw))
			}
			return nil
		})
	}
	r := float64(runs)
	b.ReportMetric(sum.GoroutinesPerFwd/r, "goroutines/fwd")
	b.ReportMetric(sum.HeapBytesPerFwd/r, "heapB/fwd")
	b.ReportMetric(sum.StackBytesPerFwd/r, "stackB/fwd")
	b.ReportMetric(sum.FDsPerFwd/r, "fds/fwd")
}

// BenchmarkMemoryPerConnection measures what one open, idle relayed
// connection costs the forwarder: 100 connections are held open through a
// forward and 100 straight to a server on 169.254.0.21 in the same process;
// the difference of the two, per connection, is the forwarder's share (the
// test server's own cost is in both and cancels out).
func BenchmarkMemoryPerConnection(b *testing.B) {
	n := newNetns(b)
	h := n.startHelper(b, Options{Interval: 20 * time.Millisecond, ExternalAddrs: []netip.Addr{vmAddr4}})
	pf, _ := h.listen("127.0.0.1:0")
	pd, _ := h.listen(hostPort(vmAddr4, 0))
	forwarded, direct := hostPort(vmAddr4, pf), hostPort(vmAddr4, pd)
	waitFor(b, "forward up", 10*time.Second, func() error { return n.reach(forwarded) })
	const conns = 100
	// hold opens conns connections to addr, each with one echoed byte so the
	// whole chain is established, and returns the growth of the helper.
	hold := func(addr string) (d [4]float64) {
		before := h.stats()
		var cs []*net.TCPConn
		defer func() {
			for _, c := range cs {
				c.Close()
			}
			waitFor(b, "helper back to its idle state", 10*time.Second, func() error {
				if s := h.stats(); s.Goroutines > before.Goroutines || s.FDs > before.FDs {
					return fmt.Errorf("%+v, idle %+v", s, before)
				}
				return nil
			})
		}()
		for range conns {
			c, err := n.dial(addr)
			if err != nil {
				b.Fatal(err)
			}
			cs = append(cs, c)
			if _, err := c.Write([]byte("ex")); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				b.Fatal(err)
			}
		}
		after := h.stats()
		return [4]float64{
			float64(after.Goroutines - before.Goroutines),
			float64(after.FDs - before.FDs),
			float64(after.Heap) - float64(before.Heap),
			float64(after.Stack) - float64(before.Stack),
		}
	}
	var sum [4]float64
	runs := 0
	for b.Loop() {
		dd := hold(direct)
		df := hold(forwarded)
		for i := range sum {
			sum[i] += (df[i] - dd[i]) / conns
		}
		runs++
	}
	r := float64(runs)
	b.ReportMetric(sum[0]/r, "goroutines/conn")
	b.ReportMetric(sum[1]/r, "fds/conn")
	b.ReportMetric(sum[2]/r, "heapB/conn")
	b.ReportMetric(sum[3]/r, "stackB/conn")
}

// BenchmarkScanInVMNamespace measures one Scan in the vm namespace, whose TCP
// table has the size a 1 GiB VM gets (see newNetns); BenchmarkScan measures
// the same on this machine's own, much larger table.
func BenchmarkScanInVMNamespace(b *testing.B) {
	n := newNetns(b)
	h := n.startHelper(b, Options{Interval: time.Hour, ExternalAddrs: []netip.Addr{vmAddr4}})
	var total float64
	runs := 0
	for b.Loop() {
		v, err := strconv.ParseFloat(h.do("scancost 200"), 64)
		if err != nil {
			b.Fatal(err)
		}
		total += v
		runs++
	}
	b.ReportMetric(total/float64(runs)/1e3, "µs/scan")
}

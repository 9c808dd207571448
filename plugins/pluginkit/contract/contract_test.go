package contract

import (
	"context"
	"sync"
	"testing"
	"time"

	controlpb "github.com/envd-project/envd/gen/control"
	procpb "github.com/envd-project/envd/gen/process"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

type recorder struct {
	mu      sync.Mutex
	applied []uint64
	hold    map[uint64]chan struct{} // a generation whose apply waits
	entered chan uint64
}

func (r *recorder) Configure(_ context.Context, cfg *controlpb.Config) error {
	r.entered <- cfg.GetGeneration()
	if ch := r.hold[cfg.GetGeneration()]; ch != nil {
		<-ch
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied = append(r.applied, cfg.GetGeneration())
	return nil
}
func (r *recorder) SnapshotPrepare(context.Context) error                         { return nil }
func (r *recorder) SnapshotRestored(context.Context) error                        { return nil }
func (r *recorder) Handover(context.Context) (*controlpb.HandoverResponse, error) { return nil, nil }
func (r *recorder) TakeOver(context.Context, *controlpb.TakeOverRequest) error    { return nil }
func (r *recorder) Shutdown(context.Context) error                                { return nil }
func (r *recorder) HTTPSocket() string                                            { return "" }
func (r *recorder) HandoffSocket() string                                         { return "" }

// Two pushes that cross end with the newer config applied last, and one
// older than what is applied is ignored.
func TestCrossingPushesLeaveTheNewest(t *testing.T) {
	release := make(chan struct{})
	r := &recorder{hold: map[uint64]chan struct{}{5: release}, entered: make(chan uint64, 10)}
	s := &ControlServer{Name: "test", Target: r}
	ctx := context.Background()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = s.Configure(ctx, &controlpb.Config{Generation: 5}) }()
	<-r.entered // generation 5 is being applied
	go func() { defer wg.Done(); _, _ = s.Configure(ctx, &controlpb.Config{Generation: 6}) }()
	time.Sleep(50 * time.Millisecond) // let 6 cross 5
	close(release)
	wg.Wait()
	if _, err := s.Configure(ctx, &controlpb.Config{Generation: 4}); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.applied); n == 0 || r.applied[n-1] != 6 {
		t.Fatalf("applied in order %v; the newest (6) must be last and 4 ignored", r.applied)
	}
	if got, _ := s.Health(ctx, nil); got.GetConfigGeneration() != 6 {
		t.Fatalf("health reports generation %d", got.GetConfigGeneration())
	}
}

// A process output event carrying a full 32 KiB pipe read (and a 16 KiB
// terminal read) takes a buffer of about its size from the hop's pool, not
// grpc-go's default 1 MiB tier (zeroed on every reuse).
func TestHopBuffersFitOutputEvents(t *testing.T) {
	data := &procpb.ProcessEvent{Event: &procpb.ProcessEvent_Data{Data: &procpb.ProcessEvent_DataEvent{
		Output: &procpb.ProcessEvent_DataEvent_Stdout{Stdout: make([]byte, 32<<10)}}}}
	pty := &procpb.ProcessEvent{Event: &procpb.ProcessEvent_Data{Data: &procpb.ProcessEvent_DataEvent{
		Output: &procpb.ProcessEvent_DataEvent_Pty{Pty: make([]byte, 16<<10)}}}}
	for name, m := range map[string]proto.Message{
		"start stdout":   &procpb.StartResponse{Event: data},
		"connect stdout": &procpb.ConnectResponse{Event: data},
		"start pty":      &procpb.StartResponse{Event: pty},
	} {
		n := proto.Size(m)
		b := mem.DefaultBufferPool().Get(n) // what the proto codec uses
		if len(*b) != n || cap(*b) > n+(1<<10) {
			t.Errorf("%s: a %d-byte message got a buffer of cap %d", name, n, cap(*b))
		}
		mem.DefaultBufferPool().Put(b)
	}
}

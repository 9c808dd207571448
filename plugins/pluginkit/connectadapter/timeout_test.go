package connectadapter

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/service"
)

// deadlineFS reports whether its call came with a deadline.
type deadlineFS struct {
	service.Filesystem
	had chan bool
}

func (f deadlineFS) Stat(ctx context.Context, _ *fspb.StatRequest) (*fspb.StatResponse, error) {
	_, ok := ctx.Deadline()
	f.had <- ok
	return &fspb.StatResponse{Entry: &fspb.EntryInfo{Name: "x"}}, ctx.Err()
}

// Connect-Timeout-Ms: 0 is "no limit" (WIRE §5.1, §11), not a deadline that
// has already passed; a positive one still applies.
func TestZeroTimeoutIsNoDeadline(t *testing.T) {
	fs := deadlineFS{had: make(chan bool, 1)}
	mux := http.NewServeMux()
	mux.Handle(NewFilesystemHandler(fs))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for timeout, wantDeadline := range map[string]bool{"0": false, "000": false, "60000": true} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/filesystem.Filesystem/Stat", strings.NewReader(`{"path":"/"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Connect-Timeout-Ms", timeout)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("timeout %s: status %d", timeout, res.StatusCode)
		}
		if had := <-fs.had; had != wantDeadline {
			t.Fatalf("timeout %s: deadline %v, want %v", timeout, had, wantDeadline)
		}
	}
}

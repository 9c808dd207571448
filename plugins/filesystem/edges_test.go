package filesystem

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Two uploads racing for one path leave one of the two bodies, whole,
// never a mix of them.
func TestRacingUploadsLeaveOneWholeBody(t *testing.T) {
	srv := newFiles(t)
	p := filepath.Join(t.TempDir(), "f")
	long := bytes.Repeat([]byte("L"), 100000)
	short := []byte("ssssssssss")
	for round := 0; round < 100; round++ {
		var wg sync.WaitGroup
		for _, body := range [][]byte{long, short} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, b := do(t, octet(t, filesURL(srv, p), bytes.NewReader(body)))
				if resp.StatusCode != 200 {
					t.Errorf("upload: %d %s", resp.StatusCode, b)
				}
			}()
		}
		wg.Wait()
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, long) && !bytes.Equal(got, short) {
			t.Fatalf("round %d: file is neither upload (%d bytes, starts %q)", round, len(got), got[:min(len(got), 16)])
		}
	}
}

package filesystem

import (
	"bytes"
	"crypto/rand"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkMultipartFind is the delimiter search over a 1 MiB window
// without a delimiter, against bytes.Index, for random (binary) data and
// for text.
func BenchmarkMultipartFind(b *testing.B) {
	random := make([]byte, copyBufSize)
	rand.Read(random)
	text := []byte(strings.Repeat("The quick brown fox jumps over the lazy dog, 0123456789.\r\n", copyBufSize/58+1)[:copyBufSize])
	for _, bd := range []string{
		"2f1c0e6e7a0d8c7b0b1a7f4e2c9d6b5a8e3f1d0c9b8a7f6e5d4c3b2a1f0e", // Go's multipart.Writer: 60 hex digits
		"----WebKitFormBoundary7MA4YWxkTrZu0gW",                        // browsers
		"B",
	} {
		for _, d := range []struct {
			name string
			data []byte
		}{{"random", random}, {"text", text}} {
			m := newMultipartReader(nil, bd, make([]byte, copyBufSize))
			b.Run(d.name+"/len"+strconv.Itoa(len(m.nlDashBoundary))+"/find", func(b *testing.B) {
				b.SetBytes(int64(len(d.data)))
				for b.Loop() {
					if m.find(d.data) >= 0 {
						b.Fatal("found")
					}
				}
			})
			b.Run(d.name+"/len"+strconv.Itoa(len(m.nlDashBoundary))+"/bytes.Index", func(b *testing.B) {
				b.SetBytes(int64(len(d.data)))
				for b.Loop() {
					if bytes.Index(d.data, m.nlDashBoundary) >= 0 {
						b.Fatal("found")
					}
				}
			})
		}
	}
}

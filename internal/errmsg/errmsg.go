// Package errmsg bounds error messages before they leave a process. Errors
// often echo their input (a path, an argument, a watcher id); a message
// travels in a gRPC trailer across the envd-init↔plugin hop and in a
// client's response, where an unbounded echo costs memory and, in an
// HTTP/2 header block, can break a connection that other calls share.
// It runs in every process: both sides of the hop (envd-init and every plugin).
package errmsg

import (
	"strconv"
	"unicode/utf8"
)

// Max is the most bytes a bounded message has: room for any real error
// text and a generous part of the input it echoes.
const Max = 4 << 10

// tailBytes of the message's end are kept: errors put their cause last
// ("…: file name too long").
const tailBytes = 512

// Bound returns s when it fits in Max bytes; otherwise its head and tail
// with the middle replaced by a marker saying how many bytes were cut. Cuts
// fall on UTF-8 boundaries, so valid text stays valid.
func Bound(s string) string {
	if len(s) <= Max {
		return s
	}
	// The marker's length depends on the count; the largest count is len(s).
	markerMax := len(marker(len(s)))
	head := Max - tailBytes - markerMax
	tail := len(s) - tailBytes
	// A rune is at most UTFMax bytes: look no further (bytes that are not
	// UTF-8 are cut anywhere).
	for i := 0; i < utf8.UTFMax-1 && !utf8.RuneStart(s[head]); i++ {
		head--
	}
	for i := 0; i < utf8.UTFMax-1 && !utf8.RuneStart(s[tail]); i++ {
		tail++
	}
	return s[:head] + marker(tail-head) + s[tail:]
}

func marker(cut int) string {
	return "…[" + strconv.Itoa(cut) + " bytes cut]…"
}

package filesystem

import (
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// File names are bytes; the wire's names are protobuf strings (and JSON),
// which must be UTF-8: one file named "bad\xffname" made ListDir answer 500
// for the whole directory and ended every WatchDir on it.
//
// Names that are not UTF-8 are carried with a reversible escape, so that a
// client can use the name it got back (Stat, Remove, download, watch) as it
// uses any other: every byte that is not part of a valid UTF-8 sequence,
// 0x80–0xFF, is shown as the private-use character U+EF00+byte
// (U+EF80–U+EFFF; the scheme of MirBSD's OPTU-8), and every path a client
// sends has those characters turned back into their bytes. To keep the
// mapping one-to-one, a name that really contains a character of that range
// has the bytes of that character escaped too. A client that shows the name
// sees one odd character where the bad byte was (an invalid byte would
// otherwise become U+FFFD, which cannot be turned back).
//
// Cost: a name that really holds U+EF80–U+EFFF is shown escaped; asked for
// by its literal name, an existing such path is still found (the literal
// path is tried when the unescaped one does not exist).

const (
	escBase = 0xEF00
	escLo   = 0xEF80
	escHi   = 0xEFFF
)

// hasEscRange reports whether s may hold a character of U+EF80–U+EFFF
// (UTF-8 EE BE xx or EE BF xx).
func hasEscRange(s string) bool {
	return strings.Contains(s, "\xee\xbe") || strings.Contains(s, "\xee\xbf")
}

// wireName is name (or path) as it goes on the wire.
func wireName(s string) string {
	if utf8.ValidString(s) && !hasEscRange(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || (r >= escLo && r <= escHi) {
			for j := i; j < i+n; j++ {
				b.WriteRune(rune(escBase + int(s[j])))
			}
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// unescapeName turns the escape characters of s back into their bytes.
func unescapeName(s string) string {
	if !hasEscRange(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r >= escLo && r <= escHi {
			b.WriteByte(byte(r - escBase))
		} else {
			b.WriteString(s[i : i+n]) // raw bytes (a /files query) stay as they are
		}
		i += n
	}
	return b.String()
}

// fsPath is the path on disk that a client's path p names.
func fsPath(p string) string {
	raw := unescapeName(p)
	if raw == p {
		return p
	}
	var st unix.Stat_t
	if unix.Lstat(raw, &st) == unix.ENOENT && unix.Lstat(p, &st) == nil {
		return p // a name that really holds those characters
	}
	return raw
}

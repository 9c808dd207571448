package connectadapter

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/envd-project/envd/internal/errmsg"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	fspb "github.com/envd-project/envd/gen/filesystem"
)

// JSONCodecs replace connect-go's two JSON codecs ("json" and
// "json; charset=utf-8") with JSONCodec. Handlers get them by default; a
// caller's own WithCodec given later still wins.
func JSONCodecs() connect.HandlerOption {
	return connect.WithHandlerOptions(
		connect.WithCodec(JSONCodec{name: "json"}),
		connect.WithCodec(JSONCodec{name: "json; charset=utf-8"}),
	)
}

// JSONCodec is connect-go's protojson codec with a hand-written encoder for
// ListDirResponse: protojson walks a 10,000-entry listing through reflection
// in ~40 ms, this encoder in a few. The output is proto3 JSON that every
// client parses to the same message as protojson's (same names, int64 as
// strings, enum names, RFC 3339 timestamps with 0/3/6/9 fraction digits,
// defaults omitted, map keys sorted, the same string escaping). Whenever the
// fast path meets something it does not reproduce exactly (invalid UTF-8, a
// timestamp out of range, an unknown message shape) the whole message goes
// through protojson, so errors are protojson's own. Decoding is protojson
// with unknown fields discarded, exactly as connect-go's default codec.
type JSONCodec struct{ name string }

var _ connect.Codec = JSONCodec{}

// Name is the codec name connect-go negotiates on ("json" unless built by
// JSONCodecs for the charset variant).
func (c JSONCodec) Name() string {
	if c.name == "" {
		return "json"
	}
	return c.name
}

// Marshal encodes message as proto3 JSON.
func (c JSONCodec) Marshal(message any) ([]byte, error) {
	return c.MarshalAppend(nil, message)
}

// MarshalAppend appends the proto3 JSON of message to dst (connect-go hands
// in a pooled buffer).
func (c JSONCodec) MarshalAppend(dst []byte, message any) ([]byte, error) {
	m, ok := message.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T doesn't implement proto.Message", message)
	}
	if r, ok := m.(*fspb.ListDirResponse); ok && r != nil {
		if out, ok := appendListDir(dst, r); ok {
			return out, nil
		}
	}
	return protojson.MarshalOptions{}.MarshalAppend(dst, m)
}

// MarshalStable is Marshal: the fast path is deterministic, and connect-go
// compacts protojson's output for GET requests the same way.
func (c JSONCodec) MarshalStable(message any) ([]byte, error) {
	return c.Marshal(message)
}

// IsBinary reports false: JSON is text.
func (c JSONCodec) IsBinary() bool { return false }

// Unmarshal decodes proto3 JSON, ignoring unknown fields (newer SDKs send
// fields an older server does not know, WIRE.md §2.1).
func (c JSONCodec) Unmarshal(data []byte, message any) error {
	m, ok := message.(proto.Message)
	if !ok {
		return fmt.Errorf("%T doesn't implement proto.Message", message)
	}
	if len(data) == 0 {
		return errors.New("zero-length payload is not a valid JSON object")
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, m); err != nil {
		// protojson quotes an offending value whole ("invalid value for
		// uint32 field pid: …"): a client's megabyte must not come back.
		return fmt.Errorf("unmarshal into %T: %s", message, errmsg.Bound(err.Error()))
	}
	return nil
}

// entrySizeHint is a typical encoded EntryInfo without its strings.
const entrySizeHint = 160

// appendListDir encodes r, or reports false if protojson must do it.
func appendListDir(dst []byte, r *fspb.ListDirResponse) ([]byte, bool) {
	start := len(dst)
	if len(r.Entries) == 0 {
		return append(dst, "{}"...), true
	}
	need := 16
	for _, e := range r.Entries {
		if e == nil {
			return dst, false
		}
		need += entrySizeHint + len(e.Name) + len(e.Path) + len(e.Permissions) + len(e.Owner) + len(e.Group)
	}
	dst = slices.Grow(dst, need)
	dst = append(dst, `{"entries":[`...)
	for i, e := range r.Entries {
		if i > 0 {
			dst = append(dst, ',')
		}
		var ok bool
		if dst, ok = appendEntry(dst, e); !ok {
			return dst[:start], false
		}
	}
	return append(dst, "]}"...), true
}

// appendEntry encodes one EntryInfo with fields in number order, as
// protojson does.
func appendEntry(b []byte, e *fspb.EntryInfo) ([]byte, bool) {
	ok := true
	b = append(b, '{')
	first := true
	field := func(name string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, name...)
	}
	str := func(name, v string) {
		if v != "" && ok {
			field(name)
			b, ok = appendString(b, v)
		}
	}
	str(`"name":`, e.Name)
	if e.Type != 0 {
		field(`"type":`)
		b = appendEnum(b, e.Type)
	}
	str(`"path":`, e.Path)
	if e.Size != 0 {
		field(`"size":"`)
		b = strconv.AppendInt(b, e.Size, 10)
		b = append(b, '"')
	}
	if e.Mode != 0 {
		field(`"mode":`)
		b = strconv.AppendUint(b, uint64(e.Mode), 10)
	}
	str(`"permissions":`, e.Permissions)
	str(`"owner":`, e.Owner)
	str(`"group":`, e.Group)
	if !ok {
		return b, false
	}
	if e.ModifiedTime != nil {
		field(`"modifiedTime":`)
		if b, ok = appendTimestamp(b, e.ModifiedTime); !ok {
			return b, false
		}
	}
	if e.SymlinkTarget != nil {
		field(`"symlinkTarget":`)
		if b, ok = appendString(b, *e.SymlinkTarget); !ok {
			return b, false
		}
	}
	if len(e.Metadata) > 0 {
		field(`"metadata":{`)
		keys := make([]string, 0, len(e.Metadata))
		for k := range e.Metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			if b, ok = appendString(b, k); !ok {
				return b, false
			}
			b = append(b, ':')
			if b, ok = appendString(b, e.Metadata[k]); !ok {
				return b, false
			}
		}
		b = append(b, '}')
	}
	return append(b, '}'), true
}

// appendEnum writes the value's name, or its number when the value is not
// declared (protojson does the same).
func appendEnum(b []byte, t fspb.FileType) []byte {
	if name, ok := fspb.FileType_name[int32(t)]; ok {
		b = append(b, '"')
		b = append(b, name...)
		return append(b, '"')
	}
	return strconv.AppendInt(b, int64(t), 10)
}

// The range google.protobuf.Timestamp allows in JSON (0001-01-01 to 9999-12-31).
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

// appendTimestamp writes RFC 3339 in UTC with 0, 3, 6 or 9 fraction digits;
// out-of-range values go to protojson for its error.
func appendTimestamp(b []byte, t *timestamppb.Timestamp) ([]byte, bool) {
	secs, nanos := t.GetSeconds(), t.GetNanos()
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos >= 1e9 {
		return b, false
	}
	b = append(b, '"')
	b = time.Unix(secs, 0).UTC().AppendFormat(b, "2006-01-02T15:04:05")
	if nanos != 0 {
		digits := 9
		for n := nanos; digits > 3 && n%1000 == 0; n /= 1000 {
			digits -= 3
		}
		var frac [10]byte
		frac[0] = '.'
		for i, n := 9, nanos; i >= 1; i, n = i-1, n/10 {
			frac[i] = byte('0' + n%10)
		}
		b = append(b, frac[:1+digits]...)
	}
	return append(b, `Z"`...), true
}

// appendString quotes s the way protojson does: `"`, `\` and control
// characters escaped (\b \f \n \r \t, else \u00XX), everything else as is;
// invalid UTF-8 reports false.
func appendString(b []byte, s string) ([]byte, bool) {
	b = append(b, '"')
	i := 0
	for i < len(s) {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				return b, false
			}
			i += n
			continue
		}
		b = append(b, s[:i]...)
		s = s[i+1:]
		i = 0
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			const hex = "0123456789abcdef"
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
	}
	b = append(b, s...)
	return append(b, '"'), true
}

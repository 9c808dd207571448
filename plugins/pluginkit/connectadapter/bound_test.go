package connectadapter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/internal/errmsg"
)

func TestBoundError(t *testing.T) {
	echo := strings.Repeat("z", 100<<10)
	ce := connect.NewError(connect.CodeNotFound, fmt.Errorf("process with tag %s not found", echo))
	ce.Meta().Set("X-Kept", "1")
	var out *connect.Error
	if !errors.As(boundError(ce), &out) || out.Code() != connect.CodeNotFound || len(out.Message()) > errmsg.Max ||
		!strings.HasSuffix(out.Message(), " not found") || out.Meta().Get("X-Kept") != "1" {
		t.Fatalf("got %v", out)
	}
	if !errors.As(boundError(fmt.Errorf("waiting: %w: %s", context.DeadlineExceeded, echo)), &out) || out.Code() != connect.CodeDeadlineExceeded {
		t.Fatalf("deadline: %v", out)
	}
	short := connect.NewError(connect.CodeAborted, errors.New("short"))
	if boundError(short) != short {
		t.Fatal("a short error was rebuilt")
	}
	// The codec's own errors quote a value whole.
	err := JSONCodec{}.Unmarshal([]byte(`{"process":{"pid":"`+echo+`"}}`), new(procpb.SendSignalRequest))
	if err == nil || len(err.Error()) > errmsg.Max+100 {
		t.Fatalf("codec error %d bytes", len(fmt.Sprint(err)))
	}
}

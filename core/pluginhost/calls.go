package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	// ErrPluginCrashed: the plugin process exited during a call.
	ErrPluginCrashed = errors.New("plugin process exited")
	// ErrPluginHung: the plugin did not answer within its time bound.
	ErrPluginHung = errors.New("plugin did not answer in time")
)

// CallError is a call that failed because of the plugin process itself
// (it exited or stopped answering), not because the plugin refused it.
type CallError struct {
	Plugin  string
	Path    string
	Method  string
	Timeout time.Duration
	// LastLines are the last lines the plugin logged.
	LastLines []string
	kind      error
}

func (e *CallError) Error() string {
	var b strings.Builder
	if errors.Is(e.kind, ErrPluginHung) {
		fmt.Fprintf(&b, "plugin %q did not answer %s within %s and was stopped (it may be hung; raise call_timeout in its plugin block if the call is legitimately slow)", e.Plugin, e.Method, e.Timeout)
	} else {
		fmt.Fprintf(&b, "plugin %q (%s) crashed during %s", e.Plugin, e.Path, e.Method)
	}
	if len(e.LastLines) > 0 {
		b.WriteString("; its last log lines:")
		for _, l := range e.LastLines {
			b.WriteString("\n  ")
			b.WriteString(l)
		}
	} else {
		b.WriteString("; it logged nothing")
	}
	return b.String()
}

func (e *CallError) Unwrap() error { return e.kind }

// longCalls may legitimately run for minutes (building disks, copying
// data). They get a larger bound than the per-call timeout.
var longCalls = map[string]bool{
	"RootDisk": true, "CreateDisk": true, "Export": true, "Import": true, "Validate": true,
	"Resize": true, "CreateSnapshot": true, "RestoreSnapshot": true, "RemoveSnapshot": true,
	"Clone": true, "RemoveImage": true, "Prune": true, "RemoveDisk": true, "ExportImage": true,
}

// longCallFactor multiplies the call timeout for long calls.
const longCallFactor = 20

func (inst *instance) timeoutFor(fullMethod string) time.Duration {
	if longCalls[path.Base(fullMethod)] {
		return inst.callTimeout * longCallFactor
	}
	return inst.callTimeout
}

// ownMethod reports whether a gRPC method is one of boxctl's plugin
// services (and not go-plugin's own plumbing, such as its stdio stream).
func ownMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/boxctl.plugin.")
}

func (inst *instance) unaryInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if !ownMethod(method) {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	inst.calls.Add(1)
	timeout := inst.timeoutFor(method)
	callCtx, cancel := context.WithTimeoutCause(ctx, timeout, ErrPluginHung)
	defer cancel()
	err := invoker(callCtx, method, req, reply, cc, opts...)
	if err == nil {
		return nil
	}
	if c := status.Code(err); callCtx.Err() == nil && (c == codes.Canceled || c == codes.DeadlineExceeded) {
		// gRPC can report the deadline (as a cancelled stream) a moment
		// before the context says so; wait for the context to settle.
		select {
		case <-callCtx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return inst.explain(ctx, callCtx, method, timeout, err)
}

// explain turns a transport failure into a CallError. Errors the plugin
// returned on purpose pass unchanged.
func (inst *instance) explain(parent, callCtx context.Context, method string, timeout time.Duration, err error) error {
	call := path.Base(method)
	if parent.Err() == nil && errors.Is(context.Cause(callCtx), ErrPluginHung) {
		inst.client.Kill()
		return &CallError{Plugin: inst.name, Path: inst.path, Method: call, Timeout: timeout, LastLines: inst.ring.lines(), kind: ErrPluginHung}
	}
	st, _ := status.FromError(err)
	if st.Code() == codes.Unavailable || st.Code() == codes.Canceled && parent.Err() == nil {
		// The connection broke. Give the process a moment to be reaped
		// so the exit and its last words are recorded.
		deadline := time.Now().Add(2 * time.Second)
		for !inst.client.Exited() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if inst.client.Exited() {
			// go-plugin logs the exit status after reaping; wait for it.
			time.Sleep(20 * time.Millisecond)
			return &CallError{Plugin: inst.name, Path: inst.path, Method: call, LastLines: inst.ring.lines(), kind: ErrPluginCrashed}
		}
	}
	return err
}

func (inst *instance) streamInterceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if !ownMethod(method) {
		return streamer(ctx, desc, cc, method, opts...)
	}
	inst.calls.Add(1)
	timeout := inst.timeoutFor(method)
	callCtx, cancel := context.WithCancelCause(ctx)
	cs, err := streamer(callCtx, desc, cc, method, opts...)
	if err != nil {
		cancel(nil)
		return nil, inst.explain(ctx, callCtx, method, timeout, err)
	}
	w := &watchedStream{ClientStream: cs, inst: inst, parent: ctx, ctx: callCtx, cancel: cancel, method: method, timeout: timeout}
	w.idle = time.AfterFunc(timeout, func() { cancel(ErrPluginHung) })
	return w, nil
}

// watchedStream cancels a stream that stays silent for longer than the
// call timeout: each received message proves the plugin is alive.
type watchedStream struct {
	grpc.ClientStream
	inst    *instance
	parent  context.Context
	ctx     context.Context
	cancel  context.CancelCauseFunc
	method  string
	timeout time.Duration
	idle    *time.Timer
}

func (w *watchedStream) RecvMsg(m any) error {
	err := w.ClientStream.RecvMsg(m)
	if err == nil {
		w.idle.Reset(w.timeout)
		return nil
	}
	w.idle.Stop()
	defer w.cancel(nil)
	if st, ok := status.FromError(err); ok && st.Code() == codes.OK {
		return err
	}
	if errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled || status.Code(err) == codes.Unavailable {
		return w.inst.explain(w.parent, w.ctx, w.method, w.timeout, err)
	}
	return err
}

// logRing keeps the last lines a plugin logged, for error reports.
type logRing struct {
	mu  sync.Mutex
	buf []string
	max int
}

func newLogRing(max int) *logRing { return &logRing{max: max} }

// Accept implements hclog.SinkAdapter.
func (r *logRing) Accept(name string, level hclog.Level, msg string, args ...any) {
	var b strings.Builder
	fmt.Fprintf(&b, "[%s] %s", strings.ToUpper(level.String()), msg)
	for i := 0; i+1 < len(args); i += 2 {
		if k := fmt.Sprint(args[i]); k == "timestamp" || k == "@module" {
			continue
		}
		fmt.Fprintf(&b, " %v=%v", args[i], args[i+1])
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = append(r.buf, b.String())
	if len(r.buf) > r.max {
		r.buf = r.buf[len(r.buf)-r.max:]
	}
}

func (r *logRing) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.buf...)
}

func (r *logRing) tail() string {
	lines := r.lines()
	if len(lines) == 0 {
		return ""
	}
	return "\nits last log lines:\n  " + strings.Join(lines, "\n  ")
}

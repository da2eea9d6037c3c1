package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/boxctl/boxctl/core"
)

// limitedBuffer keeps the first max bytes written to it and counts the rest.
type limitedBuffer struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	max       int64
	truncated bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := b.max - int64(b.buf.Len())
	if int64(len(p)) > room {
		b.truncated = true
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	b.buf.Write(p)
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func execOptions(req ExecRequest) (core.ExecOptions, error) {
	if req.TimeoutSeconds < 0 {
		return core.ExecOptions{}, badRequest("timeout_seconds: cannot be negative (0 means none)")
	}
	opts := core.ExecOptions{
		Argv: req.Cmd, Env: req.Env, WorkingDir: req.Workdir, User: req.User,
		Timeout: time.Duration(req.TimeoutSeconds * float64(time.Second)),
		Detach:  req.Detach,
	}
	for _, e := range req.Env {
		if !strings.Contains(e, "=") {
			return core.ExecOptions{}, badRequest(fmt.Sprintf("env %q: write KEY=VALUE", e))
		}
	}
	if req.TTY {
		size := core.TermSize{Cols: req.Cols, Rows: req.Rows}
		if size.Cols == 0 {
			size.Cols = 80
		}
		if size.Rows == 0 {
			size.Rows = 24
		}
		opts.TTY = &size
	}
	return opts, nil
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	var req ExecRequest
	if err := s.decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.TTY {
		writeError(w, badRequest("tty: a terminal needs a streaming exec (GET /v1/boxes/{id}/exec/ws)"))
		return
	}
	opts, err := execOptions(req)
	if err != nil {
		writeError(w, err)
		return
	}
	if req.Stdin != "" {
		opts.Stdin = strings.NewReader(req.Stdin)
	}
	ctx, release, err := s.acquireExec(r)
	if err != nil {
		writeError(w, err)
		return
	}
	defer release()
	b, err := s.startDetached(r, r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	stdout := &limitedBuffer{max: s.maxOutput}
	stderr := &limitedBuffer{max: s.maxOutput}
	opts.Stdout, opts.Stderr = stdout, stderr
	// The command runs as long as its request: a client that goes away
	// takes it with it (the context ends, the guest kills the command).
	res, err := s.rt.Exec(ctx, b.ID, opts)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ExecResponse{
		ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut, PID: res.PID,
		DurationMS: float64(res.Duration) / float64(time.Millisecond),
		Stdout:     stdout.String(), Stderr: stderr.String(), Truncated: stdout.truncated || stderr.truncated,
	})
}

// wsExecRequest reads a streaming exec's settings from the query: cmd
// (repeated, one per argument), env (repeated), workdir, user, tty, cols,
// rows, stdin, timeout_seconds.
func wsExecRequest(r *http.Request) (ExecRequest, bool, error) {
	q := r.URL.Query()
	req := ExecRequest{Cmd: q["cmd"], Env: q["env"], Workdir: q.Get("workdir"), User: q.Get("user")}
	var err error
	if req.TTY, err = boolParam(r, "tty"); err != nil {
		return req, false, err
	}
	stdin, err := boolParam(r, "stdin")
	if err != nil {
		return req, false, err
	}
	for _, p := range []struct {
		name string
		dst  *uint16
	}{{"cols", &req.Cols}, {"rows", &req.Rows}} {
		if v := q.Get(p.name); v != "" {
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return req, false, badRequest(fmt.Sprintf("query parameter %s=%q: a number from 0 to 65535", p.name, v))
			}
			*p.dst = uint16(n)
		}
	}
	if v := q.Get("timeout_seconds"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return req, false, badRequest(fmt.Sprintf("query parameter timeout_seconds=%q: a number of seconds", v))
		}
		req.TimeoutSeconds = f
	}
	return req, stdin, nil
}

// wsWriter sends what it is given as binary frames of one stream. A client
// that does not take a frame within the write timeout fails the write,
// which ends the exec.
type wsWriter struct {
	ctx     context.Context
	conn    *websocket.Conn
	stream  byte
	timeout time.Duration
	onFail  func()
}

func (w *wsWriter) Write(p []byte) (int, error) {
	frame := make([]byte, 1+len(p))
	frame[0] = w.stream
	copy(frame[1:], p)
	ctx, cancel := context.WithTimeout(w.ctx, w.timeout)
	defer cancel()
	if err := w.conn.Write(ctx, websocket.MessageBinary, frame); err != nil {
		w.onFail()
		return 0, err
	}
	return len(p), nil
}

func (s *Server) execWS(w http.ResponseWriter, r *http.Request) {
	req, wantStdin, err := wsExecRequest(r)
	if err != nil {
		writeError(w, err)
		return
	}
	opts, err := execOptions(req)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, release, err := s.acquireExec(r)
	if err != nil {
		writeError(w, err)
		return
	}
	defer release()
	b, err := s.startDetached(r, r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept has answered the request
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var stdinW *io.PipeWriter
	if wantStdin {
		var stdinR *io.PipeReader
		stdinR, stdinW = io.Pipe()
		opts.Stdin = stdinR
		defer stdinR.Close()
	}
	resize := make(chan core.TermSize, 4)
	signals := make(chan int, 4)
	opts.Resize, opts.Signals = resize, signals
	opts.Stdout = &wsWriter{ctx: ctx, conn: conn, stream: StreamStdout, timeout: s.writeTimeout, onFail: cancel}
	opts.Stderr = &wsWriter{ctx: ctx, conn: conn, stream: StreamStderr, timeout: s.writeTimeout, onFail: cancel}

	// The reader owns the command's input. When the client goes away (the
	// connection breaks or it closes its side) the command has no owner
	// left: cancelling the exec kills it in the guest.
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer cancel()
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				if stdinW != nil {
					stdinW.CloseWithError(io.ErrUnexpectedEOF)
				}
				return
			}
			if typ == websocket.MessageBinary {
				if len(data) == 0 || data[0] != StreamStdin || stdinW == nil {
					continue // only stdin flows this way; without stdin=1 it is dropped
				}
				if _, err := stdinW.Write(data[1:]); err != nil && !errors.Is(err, io.ErrClosedPipe) {
					return
				}
				continue
			}
			var c Control
			if err := json.Unmarshal(data, &c); err != nil {
				continue
			}
			switch c.Type {
			case "resize":
				select {
				case resize <- core.TermSize{Cols: c.Cols, Rows: c.Rows}:
				default:
				}
			case "signal":
				select {
				case signals <- c.Signal:
				default:
				}
			case "close_stdin":
				if stdinW != nil {
					stdinW.Close()
				}
			}
		}
	}()

	res, err := s.rt.Exec(ctx, b.ID, opts)
	final := Control{Type: "exit"}
	if err != nil {
		code := classify(err)
		final = Control{Type: "error", Error: &ErrorDetail{Code: code, Message: err.Error()}}
	} else {
		final.ExitCode = &res.ExitCode
		final.Signal = res.Signal
		final.TimedOut = res.TimedOut
	}
	if msg, jerr := json.Marshal(final); jerr == nil {
		wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), s.writeTimeout)
		_ = conn.Write(wctx, websocket.MessageText, msg)
		wcancel()
	}
	_ = conn.Close(websocket.StatusNormalClosure, "")
	cancel()
	<-readDone
}

// Package qmp is a minimal client for QEMU's machine protocol (QMP): connect,
// negotiate capabilities, run commands and read asynchronous events.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Error is an error QEMU returned for a command.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

// Event is an asynchronous QMP event, e.g. STOP or BLOCK_IO_ERROR.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
	// Timestamp is when QEMU emitted it.
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// ErrClosed reports that QEMU closed the connection, as it does when it
// exits.
var ErrClosed = errors.New("qmp: connection closed")

type message struct {
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	// ID is the id of the command answered, as it was sent.
	ID *uint64 `json:"id"`
	Event
}

// Conn is one QMP session. It is not safe for concurrent use: one goroutine
// runs commands and reads events. Events that arrive while a command waits
// for its answer are kept for Next.
type Conn struct {
	c       net.Conn
	r       *bufio.Reader
	pending []Event
	// seq numbers the commands: QEMU echoes a command's id in its answer,
	// so that the answer to a command given up on (its context ended) is
	// never taken for the next command's.
	seq uint64
}

// NewConn reads QEMU's greeting on c and negotiates capabilities. The
// context bounds the handshake only.
func NewConn(ctx context.Context, c net.Conn) (*Conn, error) {
	q := &Conn{c: c, r: bufio.NewReader(c)}
	stop := q.bound(ctx)
	defer stop()
	if _, err := q.r.ReadBytes('\n'); err != nil {
		return nil, fmt.Errorf("qmp: read greeting: %w", q.wrap(err))
	}
	if _, err := q.execute("qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return q, nil
}

// Dial connects to the QMP unix socket at path.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to QMP %s: %w", path, err)
	}
	q, err := NewConn(ctx, c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("QMP %s: %w", path, err)
	}
	return q, nil
}

// Close closes the connection.
func (q *Conn) Close() error { return q.c.Close() }

// bound applies ctx's deadline and cancellation to the connection until the
// returned function is called.
func (q *Conn) bound(ctx context.Context) func() {
	if dl, ok := ctx.Deadline(); ok {
		_ = q.c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = q.c.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		_ = q.c.SetDeadline(time.Time{})
	}
}

func (q *Conn) wrap(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return ErrClosed
	}
	return err
}

// Execute runs command with args and returns the raw "return" value.
func (q *Conn) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	stop := q.bound(ctx)
	defer stop()
	return q.execute(command, args)
}

// ExecuteWithFile runs command with args and passes QEMU an open
// descriptor of f along with it (SCM_RIGHTS), as "add-fd" and "getfd"
// expect. The connection must be a unix socket.
func (q *Conn) ExecuteWithFile(ctx context.Context, command string, args any, f *os.File) (json.RawMessage, error) {
	uc, ok := q.c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("qmp: %s: passing a descriptor needs a unix socket, not %T", command, q.c)
	}
	stop := q.bound(ctx)
	defer stop()
	req, err := q.request(command, args)
	if err != nil {
		return nil, err
	}
	n, oobn, err := uc.WriteMsgUnix(req, unix.UnixRights(int(f.Fd())), nil)
	runtime.KeepAlive(f)
	if err != nil {
		return nil, fmt.Errorf("qmp: send %s: %w", command, q.wrap(err))
	}
	if n != len(req) || oobn == 0 {
		return nil, fmt.Errorf("qmp: send %s: short write (%d of %d bytes, %d of control data)", command, n, len(req), oobn)
	}
	return q.reply(command)
}

func (q *Conn) request(command string, args any) ([]byte, error) {
	q.seq++
	req := map[string]any{"execute": command, "id": q.seq}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp: %s: %w", command, err)
	}
	return append(b, '\n'), nil
}

func (q *Conn) execute(command string, args any) (json.RawMessage, error) {
	req, err := q.request(command, args)
	if err != nil {
		return nil, err
	}
	if _, err := q.c.Write(req); err != nil {
		return nil, fmt.Errorf("qmp: send %s: %w", command, q.wrap(err))
	}
	return q.reply(command)
}

// reply reads up to the answer to command, keeping events for Next.
func (q *Conn) reply(command string) (json.RawMessage, error) {
	for {
		m, err := q.read()
		if err != nil {
			return nil, fmt.Errorf("qmp: %s: %w", command, err)
		}
		if m.Name != "" {
			q.pending = append(q.pending, m.Event)
			continue
		}
		if m.ID != nil && *m.ID != q.seq {
			continue // the late answer to an earlier command
		}
		if m.Error != nil {
			return nil, m.Error
		}
		return m.Return, nil
	}
}

func (q *Conn) read() (*message, error) {
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return nil, q.wrap(err)
	}
	var m message
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, fmt.Errorf("bad message %q: %w", line, err)
	}
	return &m, nil
}

// Next returns the next event, waiting until one arrives, ctx ends or QEMU
// closes the connection (ErrClosed).
func (q *Conn) Next(ctx context.Context) (Event, error) {
	if len(q.pending) > 0 {
		ev := q.pending[0]
		q.pending = q.pending[1:]
		return ev, nil
	}
	stop := q.bound(ctx)
	defer stop()
	for {
		m, err := q.read()
		if err != nil {
			if ctx.Err() != nil {
				return Event{}, ctx.Err()
			}
			return Event{}, err
		}
		if m.Name != "" {
			return m.Event, nil
		}
		// A stray reply (no command is outstanding): ignore it.
	}
}

// Run connects to socket, negotiates capabilities and runs command with
// args, returning the raw "return" value. Each call uses its own
// connection: QMP sockets accept one client at a time, and VMM plugins are
// stateless. Without a deadline in ctx the call is bounded by 10s.
func Run(ctx context.Context, socket, command string, args any) (json.RawMessage, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	q, err := Dial(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	return q.Execute(ctx, command, args)
}

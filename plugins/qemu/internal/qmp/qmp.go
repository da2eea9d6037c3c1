// Package qmp is a minimal client for QEMU's machine protocol (QMP) over a
// unix socket: connect, negotiate capabilities, run one command.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// Error is an error QEMU returned for a command.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

type response struct {
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	Event  string          `json:"event"`
}

// Run connects to socket, negotiates capabilities and runs command with
// args, returning the raw "return" value. Each call uses its own
// connection: QMP sockets accept one client at a time, and VMM plugins are
// stateless.
func Run(ctx context.Context, socket, command string, args any) (json.RawMessage, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect to QMP %s: %w", socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	r := bufio.NewReader(conn)
	// Greeting.
	if _, err := r.ReadBytes('\n'); err != nil {
		return nil, fmt.Errorf("qmp %s: read greeting: %w", socket, err)
	}
	if _, err := exec(conn, r, "qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return exec(conn, r, command, args)
}

func exec(conn net.Conn, r *bufio.Reader, command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("qmp: send %s: %w", command, err)
	}
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp: %s: %w", command, err)
		}
		var resp response
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp: %s: bad reply %q: %w", command, line, err)
		}
		if resp.Event != "" {
			continue
		}
		if resp.Error != nil {
			return nil, resp.Error
		}
		return resp.Return, nil
	}
}

// ErrClosed reports that QEMU closed the connection, as it does when it
// exits in answer to "quit".
var ErrClosed = errors.New("qmp: connection closed")

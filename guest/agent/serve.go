package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc"

	"github.com/boxctl/boxctl/sdk/agentmux/handshake"
)

// SerialConn is the agent's end of the serial byte pipe.
type SerialConn interface {
	handshake.Conn
	io.Closer
}

// SerialOpener opens the serial byte pipe; it is called again after each session ends.
type SerialOpener func(ctx context.Context) (SerialConn, error)

// OpenDevice returns a SerialOpener for a character device such as a virtio-serial port.
func OpenDevice(path string) SerialOpener {
	return func(context.Context) (SerialConn, error) {
		// A pollable descriptor: reads honour deadlines and Close interrupts them.
		return os.OpenFile(path, os.O_RDWR, 0)
	}
}

// ServeSerial serves s over the serial pipe that open returns, one yamux session at a time
// (the host side is a yamux client: see sdk/agentmux), until ctx ends.
//
// Each session starts with the handshake (package handshake). When the session ends —
// the host disconnected (EOF), the host sent garbage, the pipe failed — the pipe is closed,
// reopened and a new session starts: a host that reconnects always finds the agent.
func ServeSerial(ctx context.Context, s *grpc.Server, open SerialOpener, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		err := serveSerialSession(ctx, s, open, log)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			log.Debug("serial session ended", "err", err)
			// A closed host side makes reads return EOF at once; do not spin on it.
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 200*time.Millisecond)
			continue
		}
		backoff = 10 * time.Millisecond
	}
}

// serveSerialSession runs one session; a nil error means a session was established and later
// ended.
func serveSerialSession(ctx context.Context, s *grpc.Server, open SerialOpener, log *slog.Logger) error {
	conn, err := open(ctx)
	if err != nil {
		return fmt.Errorf("open serial port: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	// Tells a host still running a session with a previous incarnation of the agent that
	// this one is new. Blocks until a host is connected to the port.
	if _, err := io.WriteString(conn, handshake.AgentUp); err != nil {
		return fmt.Errorf("announce: %w", err)
	}
	if err := handshake.Guest(ctx, conn); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = nil
	cfg.Logger = yamuxLogger{log}
	// The host is a gRPC client that may keep idle connections for long; yamux keepalives
	// notice a vanished host when no EOF arrives.
	cfg.KeepAliveInterval = 15 * time.Second
	sess, err := yamux.Server(conn, cfg)
	if err != nil {
		return fmt.Errorf("yamux: %w", err)
	}
	log.Debug("serial session started")
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Serve returns when the session ends; it closes the session.
		_ = s.Serve(sessionListener{sess})
	}()
	select {
	case <-sess.CloseChan():
	case <-ctx.Done():
	}
	sess.Close()
	<-done
	return nil
}

// sessionListener makes every Accept error of an ended session final: yamux reports the
// error that ended the session (a read deadline's error says Temporary), and grpc.Server
// would keep retrying a temporary Accept error forever.
type sessionListener struct{ *yamux.Session }

func (l sessionListener) Accept() (net.Conn, error) {
	c, err := l.Session.Accept()
	if err != nil {
		return nil, fmt.Errorf("serial session ended: %v", err)
	}
	return c, nil
}

// yamuxLogger routes yamux's diagnostics (mostly "session shutdown" noise on reconnects) to
// debug level.
type yamuxLogger struct{ log *slog.Logger }

func (l yamuxLogger) Print(v ...any) { l.log.Debug(strings.TrimSpace(fmt.Sprint(v...))) }
func (l yamuxLogger) Printf(format string, v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (l yamuxLogger) Println(v ...any) { l.log.Debug(strings.TrimSpace(fmt.Sprintln(v...))) }

// findVirtioPort returns the device node of the virtio-serial port with the given name
// (what udev would link as /dev/virtio-ports/NAME; there is no udev in the guest).
func findVirtioPort(sysfs, name string) (string, error) {
	ports, err := filepath.Glob(filepath.Join(sysfs, "class/virtio-ports/*/name"))
	if err != nil {
		return "", err
	}
	for _, p := range ports {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(p)), nil
		}
	}
	return "", fmt.Errorf("virtio-serial port %q: %w", name, os.ErrNotExist)
}

var errNoTransport = errors.New("no transport to the host: neither a virtio-serial port nor vsock")

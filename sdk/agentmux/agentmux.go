// Package agentmux owns the host end of the guest agent's virtio-serial channel: it turns
// the single byte pipe a VMM exposes for the guest's "boxctl.agent" port (guestboot.SerialPort)
// into a unix socket that accepts any number of connections, each carried as one yamux stream
// to the guest agent. A VMM plugin whose hypervisor has no vsock runs a Mux next to the VM
// and names its socket as LaunchPlan.AgentSocket; the protocol on the pipe (the handshake in
// package agentmux/handshake, then yamux) is part of the guest boot contract.
//
// QEMU side:
//
//	-chardev socket,id=agent,path=SERIAL.sock,server=on,wait=off
//	-device virtio-serial-pci
//	-device virtserialport,chardev=agent,name=boxctl.agent
//
// A Mux connects to SERIAL.sock as the client, runs the handshake (agentmux/handshake)
// and a yamux client session, and listens on agent.sock. Whoever dials agent.sock (the core,
// with agentclient) speaks gRPC to the agent as if connected directly.
//
// Connections accepted before the guest agent answers wait (up to Options.SessionWait) for
// the session instead of failing: a client polling Ping gets its answer as soon as the agent
// is up. When the session breaks (QEMU gone, guest rebooted, agent restarted) the open
// streams end and the Mux reconnects and handshakes again; new connections wait for that.
package agentmux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/boxctl/boxctl/sdk/agentmux/handshake"
)

// ErrNoSession is returned by WaitSession when the context ends before a session exists.
var ErrNoSession = errors.New("agentmux: no session with the guest agent")

// Dialer opens the byte pipe to the guest (QEMU's chardev socket, or anything else in tests).
type Dialer func(ctx context.Context) (net.Conn, error)

// UnixDialer dials the unix socket of QEMU's virtio-serial chardev.
func UnixDialer(path string) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// Options tune a Mux. The zero value is usable.
type Options struct {
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
	// SessionWait is how long a connection accepted while there is no session waits for one
	// before it is closed; 60s if zero.
	SessionWait time.Duration
	// HandshakeResend is how often the hello is repeated while the guest does not answer;
	// 500ms if zero.
	HandshakeResend time.Duration
}

// Mux is the host end of one VM's agent channel.
type Mux struct {
	dial       Dialer
	socketPath string
	opts       Options
	log        *slog.Logger

	mu      sync.Mutex
	session *yamux.Session
	ready   chan struct{} // closed while session != nil; replaced when it goes away
}

// New returns a Mux that reaches the guest through dial and serves socketPath (a unix socket
// path it creates; an existing socket file there is replaced).
func New(dial Dialer, socketPath string, opts Options) *Mux {
	if opts.SessionWait == 0 {
		opts.SessionWait = 60 * time.Second
	}
	if opts.HandshakeResend == 0 {
		opts.HandshakeResend = 500 * time.Millisecond
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Mux{dial: dial, socketPath: socketPath, opts: opts, log: log, ready: make(chan struct{})}
}

// Run listens on the socket and keeps a session with the guest until ctx ends; then it
// closes the listener, removes the socket file and returns nil. It fails early only if the
// socket cannot be created.
func (m *Mux) Run(ctx context.Context) error {
	if fi, err := os.Lstat(m.socketPath); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(m.socketPath)
	}
	l, err := net.Listen("unix", m.socketPath)
	if err != nil {
		return fmt.Errorf("agentmux: listen on %s: %w", m.socketPath, err)
	}
	return m.Serve(ctx, l)
}

// Serve is Run with a listener supplied by the caller (closed when Serve returns).
func (m *Mux) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		m.sessions(ctx)
	}()
	go func() {
		defer wg.Done()
		m.accept(ctx, l)
	}()
	<-ctx.Done()
	l.Close()
	wg.Wait()
	return nil
}

// WaitSession blocks until a session with the guest agent exists (the guest answered the
// handshake) or ctx ends.
func (m *Mux) WaitSession(ctx context.Context) error {
	_, err := m.current(ctx)
	return err
}

func (m *Mux) current(ctx context.Context) (*yamux.Session, error) {
	for {
		m.mu.Lock()
		s, ready := m.session, m.ready
		m.mu.Unlock()
		if s != nil && !s.IsClosed() {
			return s, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNoSession, ctx.Err())
		}
	}
}

func (m *Mux) setSession(s *yamux.Session) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s != nil {
		m.session = s
		close(m.ready)
		return
	}
	if m.session != nil {
		m.session = nil
		m.ready = make(chan struct{})
	}
}

// sessions keeps one session alive: dial, handshake, yamux, wait for it to end, repeat.
func (m *Mux) sessions(ctx context.Context) {
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		err := m.session1(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			m.log.Debug("agentmux: no session", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			// QEMU creates its socket a moment after it starts, and the guest agent may
			// just be coming up: retry quickly, connecting is cheap.
			backoff = min(2*backoff, 100*time.Millisecond)
			continue
		}
		backoff = 10 * time.Millisecond
	}
}

func (m *Mux) session1(ctx context.Context) error {
	conn, err := m.dial(ctx)
	if err != nil {
		return fmt.Errorf("dial guest: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := handshake.Host(ctx, conn, m.opts.HandshakeResend); err != nil {
		conn.Close()
		return fmt.Errorf("handshake: %w", err)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = nil
	cfg.Logger = yamuxLogger{m.log}
	cfg.KeepAliveInterval = 15 * time.Second
	sess, err := yamux.Client(conn, cfg)
	if err != nil {
		conn.Close()
		return fmt.Errorf("yamux: %w", err)
	}
	m.log.Debug("agentmux: session with the guest agent established")
	m.setSession(sess)
	select {
	case <-sess.CloseChan():
		m.log.Debug("agentmux: session ended")
	case <-ctx.Done():
	}
	m.setSession(nil)
	sess.Close()
	return nil
}

func (m *Mux) accept(ctx context.Context, l net.Listener) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			m.log.Error("agentmux: accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			m.proxy(ctx, c)
		}()
	}
}

// proxy carries one accepted connection over one yamux stream, both ways, with half-closes.
func (m *Mux) proxy(ctx context.Context, c net.Conn) {
	defer c.Close()
	wctx, cancel := context.WithTimeout(ctx, m.opts.SessionWait)
	sess, err := m.current(wctx)
	cancel()
	if err != nil {
		m.log.Debug("agentmux: dropping connection", "err", err)
		return
	}
	st, err := sess.OpenStream()
	if err != nil {
		m.log.Debug("agentmux: open stream", "err", err)
		return
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { c.Close(); st.Close() })
	defer stop()

	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(st, c)
		// Client finished sending: half-close towards the guest.
		_ = st.Close()
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(c, st)
		if uc, ok := c.(interface{ CloseWrite() error }); ok {
			_ = uc.CloseWrite()
		}
		done <- struct{}{}
	}()
	select {
	case <-done:
		// One direction ended. If the guest side ended (stream reset or session gone), the
		// client must see it; if the client side ended, wait for the guest to finish.
	case <-sess.CloseChan():
	}
	select {
	case <-done:
	case <-sess.CloseChan():
	}
}

type yamuxLogger struct{ log *slog.Logger }

func (l yamuxLogger) Print(v ...any) { l.log.Debug(strings.TrimSpace(fmt.Sprint(v...))) }
func (l yamuxLogger) Printf(format string, v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (l yamuxLogger) Println(v ...any) { l.log.Debug(strings.TrimSpace(fmt.Sprintln(v...))) }

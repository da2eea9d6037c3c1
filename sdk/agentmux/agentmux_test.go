package agentmux_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/boxctl/boxctl/guest/agent"
	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/sdk/agentmux"
)

// fakeSerialPort stands in for QEMU's virtio-serial chardev (the real one is exercised by
// guest/vmtest): each host dial makes a fresh socketpair whose other end is what the guest
// gets when it opens the port. Like the real device, the guest closing and reopening its
// port does not disconnect the host, and a guest reading EOF (host gone) must wait for the
// next host connection.
type fakeSerialPort struct {
	mu      sync.Mutex
	cur     net.Conn
	curEOF  *atomic.Bool
	changed chan struct{}
	dials   atomic.Int32
}

func newFakeSerialPort() *fakeSerialPort { return &fakeSerialPort{changed: make(chan struct{})} }

func (f *fakeSerialPort) dial(ctx context.Context) (net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		file := os.NewFile(uintptr(fd), "serial")
		c, err := net.FileConn(file)
		file.Close()
		if err != nil {
			return nil, err
		}
		conns[i] = c
	}
	f.dials.Add(1)
	f.mu.Lock()
	if f.cur != nil {
		f.cur.Close()
	}
	f.cur, f.curEOF = conns[1], &atomic.Bool{}
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	return conns[0], nil
}

func (f *fakeSerialPort) open(ctx context.Context) (agent.SerialConn, error) {
	for {
		f.mu.Lock()
		cur, eof, changed := f.cur, f.curEOF, f.changed
		f.mu.Unlock()
		if cur != nil && !eof.Load() {
			cur.SetReadDeadline(time.Time{})
			return &guestPort{Conn: cur, eof: eof}, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// guestPort is one open of the port: Close ends this open (interrupting its reads) but keeps
// the host connected.
type guestPort struct {
	net.Conn
	eof    *atomic.Bool
	closed atomic.Bool
}

func (g *guestPort) Read(p []byte) (int, error) {
	if g.closed.Load() {
		return 0, os.ErrClosed
	}
	n, err := g.Conn.Read(p)
	if errors.Is(err, io.EOF) {
		g.eof.Store(true)
	}
	return n, err
}

func (g *guestPort) Write(p []byte) (int, error) {
	if g.closed.Load() {
		return 0, os.ErrClosed
	}
	return g.Conn.Write(p)
}

func (g *guestPort) Close() error {
	g.closed.Store(true)
	return g.Conn.SetReadDeadline(time.Unix(1, 0))
}

// startGuest serves an agent (Ping, Stats; no box root needed) over the port until the
// returned stop is called.
func startGuest(t *testing.T, port *fakeSerialPort, version string) (stop func()) {
	t.Helper()
	a := agent.New(agent.Config{Root: t.TempDir(), Version: version})
	srv := grpc.NewServer()
	a.Register(srv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		agent.ServeSerial(ctx, srv, port.open, nil)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
			srv.Stop()
		})
	}
	t.Cleanup(stop)
	return stop
}

func startMux(t *testing.T, port *fakeSerialPort, opts agentmux.Options) (sock string, m *agentmux.Mux, stop func()) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "agent.sock")
	m = agentmux.New(port.dial, sock, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("mux: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	// Run creates the socket asynchronously.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("mux socket not created")
		}
		time.Sleep(time.Millisecond)
	}
	return sock, m, stop
}

func dial(t *testing.T, sock string) *agentclient.Client {
	t.Helper()
	c, err := agentclient.Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ping(t *testing.T, c *agentclient.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := c.Ping(ctx)
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	return info.AgentVersion
}

func TestManyClientsAtOnce(t *testing.T) {
	port := newFakeSerialPort()
	startGuest(t, port, "v1")
	sock, _, _ := startMux(t, port, agentmux.Options{})

	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 8; i++ {
		c := dial(t, sock) // a connection (yamux stream) each
		for j := 0; j < 5; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if _, err := c.Stats(ctx); err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := port.dials.Load(); n != 1 {
		t.Errorf("%d serial connections for one session, want 1", n)
	}
}

func TestConnectionsWaitForTheGuest(t *testing.T) {
	port := newFakeSerialPort()
	sock, m, _ := startMux(t, port, agentmux.Options{HandshakeResend: 20 * time.Millisecond})
	c := dial(t, sock)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := m.WaitSession(ctx); !errors.Is(err, agentmux.ErrNoSession) {
		t.Errorf("WaitSession without a guest: %v", err)
	}

	got := make(chan string, 1)
	go func() { got <- ping(t, c) }() // issued before the guest is up
	time.Sleep(200 * time.Millisecond)
	startGuest(t, port, "late")
	if v := <-got; v != "late" {
		t.Errorf("version %q", v)
	}
}

func TestHostReconnects(t *testing.T) {
	port := newFakeSerialPort()
	startGuest(t, port, "v1")
	sock, _, stopMux := startMux(t, port, agentmux.Options{})
	if v := ping(t, dial(t, sock)); v != "v1" {
		t.Fatalf("version %q", v)
	}
	// The monitor (and its mux) goes away and a new one connects to the same guest.
	stopMux()
	sock2, _, _ := startMux(t, port, agentmux.Options{})
	if v := ping(t, dial(t, sock2)); v != "v1" {
		t.Errorf("after reconnect: version %q", v)
	}
}

func TestGuestRestarts(t *testing.T) {
	port := newFakeSerialPort()
	stopGuest := startGuest(t, port, "v1")
	sock, _, _ := startMux(t, port, agentmux.Options{HandshakeResend: 20 * time.Millisecond})
	c := dial(t, sock)
	if v := ping(t, c); v != "v1" {
		t.Fatalf("version %q", v)
	}
	// The guest reboots: a new agent opens the port while the host stays connected.
	stopGuest()
	startGuest(t, port, "v2")
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := c.Ping(ctx)
		cancel()
		if err == nil && info.AgentVersion == "v2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never reached the restarted agent (last: %+v, %v)", info, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

package usernet

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// serverEnv makes the test binary a TCP/UDP echo server (run inside a
// network namespace by the tests) instead of running tests.
const serverEnv = "USERNET_TEST_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(serverEnv) != "" {
		runEchoServer()
		return
	}
	os.Exit(m.Run())
}

// runEchoServer listens on TCP, UDP and HTTP, prints "ports TCP UDP HTTP",
// and serves until stdin closes. TCP: reads to EOF, then answers "got N: DATA" and
// closes, so a test sees that its half-close arrived and the answer still
// came back. UDP: echoes each datagram prefixed by "echo:".
func runEchoServer() {
	l, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	u, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				fmt.Fprintf(c, "got %d: %s", len(b), b)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := u.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = u.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	h, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	go func() {
		_ = http.Serve(h, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "remote-ok")
		}))
	}()
	fmt.Printf("ports %d %d %d\n", l.Addr().(*net.TCPAddr).Port, u.LocalAddr().(*net.UDPAddr).Port, h.Addr().(*net.TCPAddr).Port)
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// remoteServer is an echo server in its own network namespace, reachable
// from the host over a veth pair: an address that is not the host's.
type remoteServer struct {
	addr     netip.Addr // the server's, inside the namespace
	hostAddr netip.Addr // the host's end of the veth pair
	tcpPort  uint16
	udpPort  uint16
	httpPort uint16 // answers every request with "remote-ok"
}

func (r remoteServer) tcp() netip.AddrPort { return netip.AddrPortFrom(r.addr, r.tcpPort) }
func (r remoteServer) udp() netip.AddrPort { return netip.AddrPortFrom(r.addr, r.udpPort) }

// startRemoteServer makes a network namespace joined to the host by a veth
// pair (unique names, removed at cleanup) and runs runEchoServer in it.
func startRemoteServer(t *testing.T) remoteServer {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace (the test server must be on an address that is not the host's)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip to create a network namespace")
	}
	id := fmt.Sprintf("%06x", rand.Uint32()&0xffffff)
	ns, vh, vg := "bxun-"+id, "bxu"+id+"h", "bxu"+id+"g"
	third := byte(rand.IntN(256))
	fourth := byte(rand.IntN(64) * 4)
	hostAddr := netip.AddrFrom4([4]byte{198, 18, third, fourth + 1})
	srvAddr := netip.AddrFrom4([4]byte{198, 18, third, fourth + 2})
	run := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("netns", "add", ns); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	t.Cleanup(func() {
		_ = run("link", "del", vh)
		_ = run("netns", "del", ns)
	})
	for _, args := range [][]string{
		{"link", "add", vh, "type", "veth", "peer", "name", vg, "netns", ns},
		{"addr", "add", hostAddr.String() + "/30", "dev", vh},
		{"link", "set", vh, "up"},
		{"-n", ns, "addr", "add", srvAddr.String() + "/30", "dev", vg},
		{"-n", ns, "link", "set", vg, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if err := run(args...); err != nil {
			t.Fatal(err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe)
	cmd.Env = append(os.Environ(), serverEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("echo server in %s did not start: %v", ns, err)
	}
	var tp, up, hp uint16
	if _, err := fmt.Sscanf(line, "ports %d %d %d", &tp, &up, &hp); err != nil {
		t.Fatalf("echo server in %s: %q: %v", ns, line, err)
	}
	return remoteServer{addr: srvAddr, hostAddr: hostAddr, tcpPort: tp, udpPort: up, httpPort: hp}
}

// socketPair returns the two ends of a unix socketpair of the given type
// (unix.SOCK_STREAM or unix.SOCK_DGRAM) as net.Conns.
func socketPair(t testing.TB, typ int) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int, name string) net.Conn {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0], "vm"), conn(fds[1], "host")
}

// testGuest is the VM side of the link: a second gVisor stack configured
// as the guest agent configures a box (10.0.2.15/24 via 10.0.2.2), with the
// QEMU MAC, speaking the wire format over its end of the socketpair. Its
// framing is written here from the wire description, independently of
// link.go, so the two must agree on the format rather than on shared code.
type testGuest struct {
	s      *stack.Stack
	ch     *channel.Endpoint
	conn   net.Conn
	dgram  bool
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newTestGuest(t testing.TB, conn net.Conn, dgram bool) *testGuest {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	ch := channel.New(4096, MTU+header.EthernetMinimumSize, tcpip.LinkAddress("\x52\x54\x00\x12\x34\x56"))
	if err := s.CreateNIC(1, ethernet.New(ch)); err != nil {
		t.Fatal(err)
	}
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(GuestAddr), PrefixLen: 24},
	}, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	sub, _ := tcpip.NewSubnet(tcpAddr(Subnet.Addr()), tcpip.MaskFromBytes([]byte{255, 255, 255, 0}))
	s.SetRouteTable([]tcpip.Route{
		{Destination: sub, NIC: 1},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpAddr(GatewayAddr), NIC: 1},
	})
	ctx, cancel := context.WithCancel(context.Background())
	g := &testGuest{s: s, ch: ch, conn: conn, dgram: dgram, cancel: cancel}
	g.wg.Add(2)
	go func() { // stack → wire
		defer g.wg.Done()
		var out []byte
		for {
			pkt := ch.ReadContext(ctx)
			if pkt == nil {
				return
			}
			frame := pkt.ToView().AsSlice()
			out = out[:0]
			if !dgram {
				out = binary.BigEndian.AppendUint32(out, uint32(len(frame)))
			}
			out = append(out, frame...)
			pkt.DecRef()
			if _, err := conn.Write(out); err != nil {
				return
			}
		}
	}()
	go func() { // wire → stack
		defer g.wg.Done()
		buf := make([]byte, 70000)
		for {
			var n int
			if dgram {
				var err error
				if n, err = conn.Read(buf); err != nil {
					return
				}
			} else {
				var l [4]byte
				if _, err := io.ReadFull(conn, l[:]); err != nil {
					return
				}
				n = int(binary.BigEndian.Uint32(l[:]))
				if _, err := io.ReadFull(conn, buf[:n]); err != nil {
					return
				}
			}
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(buf[:n])})
			ch.InjectInbound(0, pkt)
			pkt.DecRef()
		}
	}()
	t.Cleanup(g.close)
	return g
}

func (g *testGuest) close() {
	g.cancel()
	_ = g.conn.Close()
	g.wg.Wait()
	g.s.Close()
	g.s.Wait()
	g.ch.Close()
}

func (g *testGuest) dialTCP(ctx context.Context, dst netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialContextTCP(ctx, g.s, tcpip.FullAddress{NIC: 1, Addr: tcpAddr(dst.Addr()), Port: dst.Port()}, ipv4.ProtocolNumber)
}

func (g *testGuest) dialUDP(dst netip.AddrPort) (*gonet.UDPConn, error) {
	return gonet.DialUDP(g.s, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpAddr(dst.Addr()), Port: dst.Port()}, ipv4.ProtocolNumber)
}

func (g *testGuest) listenTCP(port uint16) (*gonet.TCPListener, error) {
	return gonet.ListenTCP(g.s, tcpip.FullAddress{NIC: 1, Addr: tcpAddr(GuestAddr), Port: port}, ipv4.ProtocolNumber)
}

func (g *testGuest) listenUDP(port uint16) (*gonet.UDPConn, error) {
	return gonet.DialUDP(g.s, &tcpip.FullAddress{NIC: 1, Addr: tcpAddr(GuestAddr), Port: port}, nil, ipv4.ProtocolNumber)
}

// served is a Network running Serve with a test guest on the other end.
type served struct {
	n     *Network
	guest *testGuest
	errc  chan error
}

// serve starts Serve for cfg with a test guest on a socketpair of typ;
// prepare, if given, adjusts the Network first.
func serve(t testing.TB, cfg Config, typ int, prepare ...func(*Network)) *served {
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range prepare {
		p(n)
	}
	vm, host := socketPair(t, typ)
	sv := &served{n: n, errc: make(chan error, 1)}
	go func() { sv.errc <- n.Serve(context.Background(), host) }()
	sv.guest = newTestGuest(t, vm, typ == unix.SOCK_DGRAM)
	t.Cleanup(func() {
		_ = n.Close()
		select {
		case <-sv.errc:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return sv
}

// exchangeTCP writes msg, half-closes and reads the whole answer.
func exchangeTCP(c interface {
	net.Conn
	CloseWrite() error
}, msg string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if err := c.CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// loopbackServer listens on addr (e.g. "127.0.0.1:0") and answers every
// connection like runEchoServer; it records how many it accepted.
type loopbackServer struct {
	l        net.Listener
	mu       sync.Mutex
	accepted int
}

func newLoopbackServer(t testing.TB, addr string) *loopbackServer {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &loopbackServer{l: l}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted++
			s.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				b, _ := io.ReadAll(c)
				fmt.Fprintf(c, "got %d: %s", len(b), b)
			}()
		}
	}()
	t.Cleanup(func() { _ = l.Close(); wg.Wait() })
	return s
}

func (s *loopbackServer) port() uint16 { return uint16(s.l.Addr().(*net.TCPAddr).Port) }

func (s *loopbackServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// isRefused reports whether a guest dial failed with a reset.
func isRefused(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection was refused")
}

// waitGoroutines waits until the number of goroutines is back to at most
// base, and fails with their stacks if it is not within a generous bound.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), base, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var errTimeout = errors.New("timed out")

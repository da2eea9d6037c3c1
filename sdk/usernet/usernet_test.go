package usernet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

func TestGuestReachesRemoteTCPAndUDP(t *testing.T) {
	srv := startRemoteServer(t)
	sv := serve(t, Config{}, unix.SOCK_STREAM)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := sv.guest.dialTCP(ctx, srv.tcp())
	if err != nil {
		t.Fatalf("guest dial %s: %v", srv.tcp(), err)
	}
	defer c.Close()
	// Large enough to take many segments and window updates.
	msg := strings.Repeat("0123456789abcdef", 64<<10)
	got, err := exchangeTCP(c, msg)
	if err != nil {
		t.Fatalf("exchange with %s: %v", srv.tcp(), err)
	}
	if want := fmt.Sprintf("got %d: %s", len(msg), msg); got != want {
		t.Fatalf("answer from %s: %d bytes, want %d", srv.tcp(), len(got), len(want))
	}

	u, err := sv.guest.dialUDP(srv.udp())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := range 3 {
		ping := fmt.Sprintf("ping %d", i)
		reply, err := udpRoundTrip(u, ping)
		if err != nil {
			t.Fatalf("UDP to %s: %v", srv.udp(), err)
		}
		if reply != "echo:"+ping {
			t.Fatalf("UDP reply %q, want %q", reply, "echo:"+ping)
		}
	}
	st := sv.n.Stats()
	if st.TCPConns != 1 || st.UDPFlows != 1 {
		t.Errorf("stats: %d TCP connections and %d UDP flows, want 1 and 1", st.TCPConns, st.UDPFlows)
	}
	if st.DeniedTCP != 0 || st.DeniedUDP != 0 {
		t.Errorf("stats: denied %d TCP and %d UDP, want none: %+v", st.DeniedTCP, st.DeniedUDP, st.RecentDenials)
	}
	if st.RxFrames == 0 || st.TxFrames == 0 || st.RxBytes < uint64(len(msg)) {
		t.Errorf("stats: link counters %+v do not show the traffic", st)
	}
}

// udpRoundTrip sends msg and waits for one reply, retrying a few times
// (the first datagram may wait for ARP).
func udpRoundTrip(c net.Conn, msg string) (string, error) {
	buf := make([]byte, 65535)
	for range 10 {
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		if !isTimeout(err) {
			return "", err
		}
	}
	return "", errTimeout
}

// hostAddress returns a non-loopback address of a host interface.
func hostAddress(t *testing.T) netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			ip, _ := netip.AddrFromSlice(ipn.IP)
			ip = ip.Unmap()
			if ip.Is4() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
				return ip
			}
		}
	}
	t.Skip("the host has no non-loopback IPv4 address to test against")
	return netip.Addr{}
}

func TestHostIsProtectedByDefault(t *testing.T) {
	lo := newLoopbackServer(t, "127.0.0.1:0")
	any := newLoopbackServer(t, "0.0.0.0:0") // on every host address
	own := hostAddress(t)
	sv := serve(t, Config{}, unix.SOCK_STREAM)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	refused := []netip.AddrPort{
		netip.AddrPortFrom(GatewayAddr, lo.port()),
		netip.AddrPortFrom(own, any.port()),
		netip.AddrPortFrom(DNSAddr, 80),
	}
	for _, dst := range refused {
		c, err := sv.guest.dialTCP(ctx, dst)
		if err == nil {
			c.Close()
			t.Errorf("guest connected to %s; want a reset", dst)
			continue
		}
		if !isRefused(err) {
			t.Errorf("guest dial %s: %v; want connection refused", dst, err)
		}
	}
	if n := lo.count() + any.count(); n != 0 {
		t.Errorf("host servers accepted %d connections from the guest", n)
	}
	// Other addresses of the guest network do not exist: nobody answers
	// ARP for them.
	if c, err := sv.guest.dialTCP(ctx, netip.MustParseAddrPort("10.0.2.99:80")); err == nil {
		c.Close()
		t.Error("guest connected to 10.0.2.99:80")
	} else if !strings.Contains(err.Error(), "no route to host") {
		t.Errorf("guest dial 10.0.2.99:80: %v; want no route to host", err)
	}

	// A UDP datagram to the host is dropped and counted.
	u, err := sv.guest.dialUDP(netip.AddrPortFrom(GatewayAddr, 9))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the UDP denial to be counted", func() bool { return sv.n.Stats().DeniedUDP >= 1 })

	st := sv.n.Stats()
	if st.DeniedTCP != uint64(len(refused)) {
		t.Errorf("DeniedTCP = %d, want %d", st.DeniedTCP, len(refused))
	}
	checkDenials(t, st, []string{
		"tcp " + refused[0].String() + ": " + errGateway.Error(),
		"tcp " + refused[1].String() + ": " + errHostAddress.Error(),
		"tcp " + refused[2].String() + ": " + errGuestNetwork.Error(),
		"udp " + GatewayAddr.String() + ":9: " + errGateway.Error(),
	})
}

func checkDenials(t *testing.T, st Stats, want []string) {
	t.Helper()
	var reasons []string
	for _, d := range st.RecentDenials {
		reasons = append(reasons, d.Protocol+" "+d.Dst.String()+": "+d.Reason)
	}
	joined := strings.Join(reasons, "\n")
	for _, w := range want {
		if !strings.Contains(joined, w) {
			t.Errorf("recent denials lack %q:\n%s", w, joined)
		}
	}
}

// TestHostLoopbackRefusedToRawPackets sends what a hostile guest can send
// with a raw socket — packets addressed to 127.0.0.1 itself — since a
// well-behaved guest stack never puts them on the wire.
func TestHostLoopbackRefusedToRawPackets(t *testing.T) {
	lo := newLoopbackServer(t, "127.0.0.1:0")
	loU, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer loU.Close()
	loUPort := uint16(loU.LocalAddr().(*net.UDPAddr).Port)
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("AllowHostLoopback=%v", allow), func(t *testing.T) {
			r := rawServe(t, Config{AllowHostLoopback: allow})
			dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), lo.port())
			r.send(tcpSYN(dst, 40000))
			f := r.recvTCP(t, dst)
			tcpH := header.TCP(header.IPv4(f[header.EthernetMinimumSize:]).Payload())
			if allow {
				if !tcpH.Flags().Contains(header.TCPFlagSyn | header.TCPFlagAck) {
					t.Fatalf("SYN to %s with AllowHostLoopback: answered %v, want SYN-ACK", dst, tcpH.Flags())
				}
				waitFor(t, "the loopback server to accept", func() bool { return lo.count() == 1 })
				return
			}
			if !tcpH.Flags().Contains(header.TCPFlagRst) {
				t.Fatalf("SYN to %s: answered %v, want RST", dst, tcpH.Flags())
			}
			udst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), loUPort)
			r.send(udpDatagram(udst, 40001, []byte("leak")))
			waitFor(t, "the UDP denial", func() bool { return r.n.Stats().DeniedUDP == 1 })
			_ = loU.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, _, err := loU.ReadFrom(make([]byte, 100)); err == nil {
				t.Fatalf("the host's loopback UDP socket received %d bytes from the guest", n)
			}
			if lo.count() != 0 {
				t.Fatalf("the loopback server accepted %d connections", lo.count())
			}
			st := r.n.Stats()
			if st.DeniedTCP != 1 {
				t.Errorf("DeniedTCP = %d, want 1", st.DeniedTCP)
			}
			checkDenials(t, st, []string{
				"tcp " + dst.String() + ": " + errHostLoopback.Error(),
				"udp " + udst.String() + ": " + errHostLoopback.Error(),
			})
		})
	}
}

func TestAllowHostLoopbackReachesLoopbackThroughGateway(t *testing.T) {
	lo := newLoopbackServer(t, "127.0.0.1:0")
	sv := serve(t, Config{AllowHostLoopback: true}, unix.SOCK_STREAM)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dst := netip.AddrPortFrom(GatewayAddr, lo.port())
	c, err := sv.guest.dialTCP(ctx, dst)
	if err != nil {
		t.Fatalf("guest dial %s with AllowHostLoopback: %v", dst, err)
	}
	defer c.Close()
	got, err := exchangeTCP(c, "hello")
	if err != nil || got != "got 5: hello" {
		t.Fatalf("exchange through %s: %q, %v", dst, got, err)
	}
	if lo.count() != 1 {
		t.Errorf("the 127.0.0.1 server accepted %d connections, want 1", lo.count())
	}
	// The rest of the guest network stays closed.
	if c, err := sv.guest.dialTCP(ctx, netip.AddrPortFrom(DNSAddr, lo.port())); err == nil {
		c.Close()
		t.Errorf("guest connected to %s:%d", DNSAddr, lo.port())
	}
}

// denyPort is a Policy refusing one destination.
type denyPort struct{ dst netip.AddrPort }

func (p denyPort) Allow(proto string, dst netip.AddrPort) error {
	if proto == "tcp" && dst == p.dst {
		return errors.New("not on the allow-list")
	}
	return nil
}

func TestPolicyRefusesDestination(t *testing.T) {
	a := newLoopbackServer(t, "127.0.0.1:0")
	b := newLoopbackServer(t, "127.0.0.1:0")
	denied := netip.AddrPortFrom(GatewayAddr, a.port())
	sv := serve(t, Config{AllowHostLoopback: true, Policy: denyPort{denied}}, unix.SOCK_STREAM)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if c, err := sv.guest.dialTCP(ctx, denied); err == nil {
		c.Close()
		t.Fatalf("guest connected to %s, which the policy refuses", denied)
	} else if !isRefused(err) {
		t.Fatalf("dial %s: %v; want connection refused", denied, err)
	}
	allowed := netip.AddrPortFrom(GatewayAddr, b.port())
	c, err := sv.guest.dialTCP(ctx, allowed)
	if err != nil {
		t.Fatalf("dial %s, which the policy allows: %v", allowed, err)
	}
	c.Close()
	st := sv.n.Stats()
	if st.DeniedTCP != 1 || len(st.RecentDenials) != 1 || st.RecentDenials[0].Reason != "not on the allow-list" || st.RecentDenials[0].Dst != denied {
		t.Errorf("stats after a policy refusal: %d denied, %+v", st.DeniedTCP, st.RecentDenials)
	}
	if a.count() != 0 {
		t.Errorf("the refused server accepted %d connections", a.count())
	}
}

func TestPolicyCannotWidenHostRule(t *testing.T) {
	lo := newLoopbackServer(t, "127.0.0.1:0")
	sv := serve(t, Config{Policy: denyPort{}}, unix.SOCK_STREAM) // allows everything
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c, err := sv.guest.dialTCP(ctx, netip.AddrPortFrom(GatewayAddr, lo.port())); err == nil {
		c.Close()
		t.Fatal("an allow-all policy opened the host's loopback")
	}
}

// dnsTestServer answers every A query with 192.0.2.99 on UDP and TCP port
// 53 of a random loopback address, as the host's resolver.
type dnsTestServer struct {
	addr  netip.Addr
	mu    sync.Mutex
	names []string
	a     [4]byte // the answer; 192.0.2.99 until setAnswer
	ttl   uint32
}

// setAnswer makes the server answer every A query with a and ttl.
func (s *dnsTestServer) setAnswer(a netip.Addr, ttl uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.a, s.ttl = a.As4(), ttl
}

func startDNSServer(t *testing.T) *dnsTestServer {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind port 53 (resolv.conf cannot name another port)")
	}
	var (
		ul  net.PacketConn
		tl  net.Listener
		err error
		a   netip.Addr
	)
	for range 20 {
		a = netip.AddrFrom4([4]byte{127, byte(rand.IntN(250) + 1), byte(rand.IntN(256)), byte(rand.IntN(250) + 2)})
		if ul, err = net.ListenPacket("udp4", netip.AddrPortFrom(a, 53).String()); err != nil {
			continue
		}
		if tl, err = net.Listen("tcp4", netip.AddrPortFrom(a, 53).String()); err != nil {
			ul.Close()
			continue
		}
		break
	}
	if err != nil {
		t.Fatalf("bind a test DNS server on port 53: %v", err)
	}
	s := &dnsTestServer{addr: a, a: [4]byte{192, 0, 2, 99}, ttl: 60}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			if r := s.answer(buf[:n]); r != nil {
				_, _ = ul.WriteTo(r, from)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			func() {
				defer c.Close()
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				r := s.answer(q)
				_, _ = c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(r))))
				_, _ = c.Write(r)
			}()
		}
	}()
	t.Cleanup(func() { ul.Close(); tl.Close(); wg.Wait() })
	return s
}

func (s *dnsTestServer) answer(q []byte) []byte {
	var m dnsmessage.Message
	if err := m.Unpack(q); err != nil || len(m.Questions) != 1 {
		return nil
	}
	s.mu.Lock()
	s.names = append(s.names, m.Questions[0].Name.String())
	ans, ttl := s.a, s.ttl
	s.mu.Unlock()
	m.Header.Response = true
	if m.Questions[0].Type == dnsmessage.TypeA {
		m.Answers = []dnsmessage.Resource{{
			Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: ttl},
			Body:   &dnsmessage.AResource{A: ans},
		}}
	}
	r, err := m.Pack()
	if err != nil {
		return nil
	}
	return r
}

func (s *dnsTestServer) asked() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.names)
}

func writeResolvConf(t *testing.T, lines ...string) string {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func dnsQuery(t *testing.T, id uint16, name string) []byte {
	m := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// guestLookup asks 10.0.2.3 from the guest over UDP or TCP and returns the
// reply.
func guestLookup(t *testing.T, g *testGuest, name string, overTCP bool) dnsmessage.Message {
	t.Helper()
	id := uint16(rand.Uint32())
	q := dnsQuery(t, id, name)
	dst := netip.AddrPortFrom(DNSAddr, 53)
	var raw []byte
	if overTCP {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := g.dialTCP(ctx, dst)
		if err != nil {
			t.Fatalf("guest dial %s: %v", dst, err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)); err != nil {
			t.Fatal(err)
		}
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatalf("DNS over TCP: %v", err)
		}
		raw = make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, raw); err != nil {
			t.Fatal(err)
		}
	} else {
		c, err := g.dialUDP(dst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 65535)
		for try := 0; ; try++ {
			if _, err := c.Write(q); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(6 * time.Second))
			n, err := c.Read(buf)
			if err == nil {
				raw = buf[:n]
				break
			}
			if !isTimeout(err) || try == 3 {
				t.Fatalf("DNS over UDP: %v", err)
			}
		}
	}
	var m dnsmessage.Message
	if err := m.Unpack(raw); err != nil {
		t.Fatalf("unpack the DNS reply: %v", err)
	}
	if m.Header.ID != id || !m.Header.Response {
		t.Fatalf("reply header %+v does not answer query %d", m.Header, id)
	}
	return m
}

func answerA(m dnsmessage.Message) string {
	for _, a := range m.Answers {
		if r, ok := a.Body.(*dnsmessage.AResource); ok {
			return netip.AddrFrom4(r.A).String()
		}
	}
	return ""
}

func TestDNSForwardsToHostResolver(t *testing.T) {
	dns := startDNSServer(t)
	// A dead nameserver first: the forwarder must move on to the next one.
	dead := netip.AddrFrom4([4]byte{127, 0, 0, byte(rand.IntN(200) + 30)})
	rc := writeResolvConf(t, "# test", "search example", "nameserver "+dead.String(), "nameserver "+dns.addr.String())
	sv := serve(t, Config{ResolvConf: rc}, unix.SOCK_STREAM)
	for _, overTCP := range []bool{false, true} {
		m := guestLookup(t, sv.guest, "box.test.", overTCP)
		if m.Header.RCode != dnsmessage.RCodeSuccess || answerA(m) != "192.0.2.99" {
			t.Errorf("lookup over TCP=%v: rcode %v, answer %q; want 192.0.2.99", overTCP, m.Header.RCode, answerA(m))
		}
	}
	if got := dns.asked(); len(got) != 2 || got[0] != "box.test." {
		t.Errorf("the host resolver was asked %q, want box.test. twice", got)
	}
	if st := sv.n.Stats(); st.DNSQueries != 2 || st.DNSFailures != 0 {
		t.Errorf("stats: %d queries, %d failures; want 2 and 0", st.DNSQueries, st.DNSFailures)
	}
}

func TestDNSServfailWhenNoNameserverAnswers(t *testing.T) {
	dead := netip.AddrFrom4([4]byte{127, 0, 0, byte(rand.IntN(200) + 30)})
	for _, name := range []string{"dead", "empty", "missing"} {
		t.Run(name, func(t *testing.T) {
			var rc string
			switch name {
			case "dead":
				rc = writeResolvConf(t, "nameserver "+dead.String())
			case "empty":
				rc = writeResolvConf(t, "options ndots:1")
			case "missing":
				rc = filepath.Join(t.TempDir(), "absent")
			}
			sv := serve(t, Config{ResolvConf: rc}, unix.SOCK_STREAM)
			m := guestLookup(t, sv.guest, "box.test.", false)
			if m.Header.RCode != dnsmessage.RCodeServerFailure {
				t.Fatalf("rcode %v, want SERVFAIL", m.Header.RCode)
			}
			if len(m.Questions) != 1 || m.Questions[0].Name.String() != "box.test." {
				t.Errorf("SERVFAIL reply lost the question: %+v", m.Questions)
			}
			if st := sv.n.Stats(); st.DNSFailures != 1 {
				t.Errorf("DNSFailures = %d, want 1", st.DNSFailures)
			}
		})
	}
}

// refuseName is a Policy that also sees DNS queries.
type refuseName struct{ name string }

func (refuseName) Allow(string, netip.AddrPort) error { return nil }
func (p refuseName) AllowQuery(name string) error {
	if name == p.name {
		return errors.New("not allowed")
	}
	return nil
}

func TestQueryPolicyRefusesName(t *testing.T) {
	dns := startDNSServer(t)
	rc := writeResolvConf(t, "nameserver "+dns.addr.String())
	sv := serve(t, Config{ResolvConf: rc, Policy: refuseName{"blocked.test."}}, unix.SOCK_STREAM)
	if m := guestLookup(t, sv.guest, "blocked.test.", false); m.Header.RCode != dnsmessage.RCodeRefused {
		t.Errorf("rcode for a refused name: %v, want REFUSED", m.Header.RCode)
	}
	if m := guestLookup(t, sv.guest, "fine.test.", true); answerA(m) != "192.0.2.99" {
		t.Errorf("an allowed name got %v %q", m.Header.RCode, answerA(m))
	}
	if got := dns.asked(); len(got) != 1 || got[0] != "fine.test." {
		t.Errorf("the host resolver was asked %q; the refused name must not leave the host", got)
	}
	if st := sv.n.Stats(); st.DNSRefused != 1 {
		t.Errorf("DNSRefused = %d, want 1", st.DNSRefused)
	}
}

// freePort returns a port that was free on 127.0.0.1 a moment ago.
func freePort(t testing.TB, network string) uint16 {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return uint16(c.LocalAddr().(*net.UDPAddr).Port)
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func TestPortForwardTCPAndUDP(t *testing.T) {
	tp, up := freePort(t, "tcp"), freePort(t, "udp")
	sv := serve(t, Config{Ports: []PortForward{
		{Protocol: "tcp", HostIP: "127.0.0.1", HostPort: tp, GuestPort: 80},
		{Protocol: "udp", HostIP: "127.0.0.1", HostPort: up, GuestPort: 5353},
	}}, unix.SOCK_STREAM)

	l, err := sv.guest.listenTCP(80)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type accepted struct {
		remote string
		err    error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			acc <- accepted{err: err}
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		fmt.Fprintf(c, "guest got %d: %s", len(b), b)
		acc <- accepted{remote: c.RemoteAddr().String()}
	}()
	hc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tp))
	if err != nil {
		t.Fatalf("host dial the forwarded port: %v", err)
	}
	defer hc.Close()
	got, err := exchangeTCP(hc.(*net.TCPConn), "request")
	if err != nil || got != "guest got 7: request" {
		t.Fatalf("through the forwarded port: %q, %v", got, err)
	}
	if a := <-acc; a.err != nil || !strings.HasPrefix(a.remote, GatewayAddr.String()+":") {
		t.Errorf("the guest saw the connection from %q (%v), want the gateway", a.remote, a.err)
	}

	gu, err := sv.guest.listenUDP(5353)
	if err != nil {
		t.Fatal(err)
	}
	defer gu.Close()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := gu.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = gu.WriteTo(append([]byte("guest:"), buf[:n]...), from)
		}
	}()
	hu, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", up))
	if err != nil {
		t.Fatal(err)
	}
	defer hu.Close()
	reply, err := udpRoundTrip(hu, "hi")
	if err != nil || reply != "guest:hi" {
		t.Fatalf("UDP through the forwarded port: %q, %v", reply, err)
	}
	if st := sv.n.Stats(); st.ForwardedConns != 2 {
		t.Errorf("ForwardedConns = %d, want 2", st.ForwardedConns)
	}
}

func TestPortForwardToClosedGuestPortClosesHostConnection(t *testing.T) {
	tp := freePort(t, "tcp")
	serve(t, Config{Ports: []PortForward{{HostIP: "127.0.0.1", HostPort: tp, GuestPort: 81}}}, unix.SOCK_STREAM)
	hc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tp))
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	_ = hc.SetDeadline(time.Now().Add(20 * time.Second))
	if n, err := hc.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("read from a forward to a closed guest port: %d bytes, %v; want the connection closed", n, err)
	}
}

func TestNewRefusesPortInUseAndBadForwards(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := uint16(busy.Addr().(*net.TCPAddr).Port)
	free := freePort(t, "tcp")

	_, err = New(Config{Ports: []PortForward{
		{Protocol: "tcp", HostIP: "127.0.0.1", HostPort: free, GuestPort: 80},
		{Protocol: "tcp", HostIP: "127.0.0.1", HostPort: port, GuestPort: 80},
	}})
	want := fmt.Sprintf("host port %d is already in use (tcp 127.0.0.1:%d): choose another -p port", port, port)
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrPortInUse) {
		t.Fatalf("New with a busy port: %v; want an error containing %q wrapping ErrPortInUse", err, want)
	}
	// The port bound before the failure was released.
	l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", free))
	if err != nil {
		t.Fatalf("New kept port %d after failing: %v", free, err)
	}
	l.Close()

	for _, tc := range []struct {
		pf   PortForward
		want string
	}{
		{PortForward{Protocol: "sctp", HostPort: free, GuestPort: 1}, `protocol "sctp"`},
		{PortForward{HostPort: 0, GuestPort: 1}, "ports are numbers from 1 to 65535"},
		{PortForward{HostPort: free, GuestPort: 0}, "ports are numbers from 1 to 65535"},
		{PortForward{HostIP: "localhost", HostPort: free, GuestPort: 1}, `"localhost" is not an IP address`},
		{PortForward{HostIP: "192.0.2.254", HostPort: free, GuestPort: 1}, "not one of this host's"},
	} {
		if _, err := New(Config{Ports: []PortForward{tc.pf}}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): %v; want an error containing %q", tc.pf, err, tc.want)
		}
	}
	dup := PortForward{HostIP: "127.0.0.1", HostPort: free, GuestPort: 1}
	if _, err := New(Config{Ports: []PortForward{dup, dup}}); err == nil || !strings.Contains(err.Error(), "forwarded twice") {
		t.Errorf("New with a port twice: %v", err)
	}
}

func TestDatagramLink(t *testing.T) {
	lo := newLoopbackServer(t, "127.0.0.1:0")
	sv := serve(t, Config{AllowHostLoopback: true}, unix.SOCK_DGRAM)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := sv.guest.dialTCP(ctx, netip.AddrPortFrom(GatewayAddr, lo.port()))
	if err != nil {
		t.Fatalf("dial over a datagram link: %v", err)
	}
	defer c.Close()
	msg := strings.Repeat("x", 300<<10)
	got, err := exchangeTCP(c, msg)
	if err != nil || got != fmt.Sprintf("got %d: %s", len(msg), msg) {
		t.Fatalf("exchange over a datagram link: %d bytes, %v", len(got), err)
	}
}

// rawLink is the VM end of a stream link driven by hand, frame by frame.
type rawLink struct {
	t *testing.T
	c net.Conn
}

func (r rawLink) send(frame []byte) {
	r.t.Helper()
	if _, err := r.c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(frame))), frame...)); err != nil {
		r.t.Fatal(err)
	}
}

// recv returns the next frame, or nil if none comes within d.
func (r rawLink) recv(d time.Duration) []byte {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(d))
	var l [4]byte
	if _, err := io.ReadFull(r.c, l[:]); err != nil {
		if isTimeout(err) {
			return nil
		}
		r.t.Fatal(err)
	}
	b := make([]byte, binary.BigEndian.Uint32(l[:]))
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(r.c, b); err != nil {
		r.t.Fatal(err)
	}
	return b
}

var guestMAC = []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

func arpRequest(target netip.Addr) []byte {
	f := make([]byte, header.EthernetMinimumSize+header.ARPSize)
	header.Ethernet(f).Encode(&header.EthernetFields{
		SrcAddr: tcpLink(guestMAC), DstAddr: header.EthernetBroadcastAddress, Type: header.ARPProtocolNumber,
	})
	a := header.ARP(f[header.EthernetMinimumSize:])
	a.SetIPv4OverEthernet()
	a.SetOp(header.ARPRequest)
	copy(a.HardwareAddressSender(), guestMAC)
	ga := GuestAddr.As4()
	copy(a.ProtocolAddressSender(), ga[:])
	ta := target.As4()
	copy(a.ProtocolAddressTarget(), ta[:])
	return f
}

func TestARPAnsweredOnlyForServedAddresses(t *testing.T) {
	n, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	vm, host := socketPair(t, unix.SOCK_STREAM)
	defer vm.Close()
	go n.Serve(context.Background(), host)
	r := rawLink{t, vm}

	for _, a := range []netip.Addr{GatewayAddr, DNSAddr} {
		r.send(arpRequest(a))
		f := r.recv(10 * time.Second)
		if f == nil {
			t.Fatalf("no ARP reply for %s", a)
		}
		rep := header.ARP(f[header.EthernetMinimumSize:])
		if rep.Op() != header.ARPReply || netip.AddrFrom4([4]byte(rep.ProtocolAddressSender())) != a ||
			string(rep.HardwareAddressSender()) != string(gatewayMAC) {
			t.Fatalf("ARP reply for %s: op %d sender %v/%x", a, rep.Op(), rep.ProtocolAddressSender(), rep.HardwareAddressSender())
		}
	}
	for _, a := range []netip.Addr{netip.MustParseAddr("10.0.2.5"), netip.MustParseAddr("10.0.2.15"), netip.MustParseAddr("192.0.2.1")} {
		r.send(arpRequest(a))
		if f := r.recv(500 * time.Millisecond); f != nil {
			t.Fatalf("the stack answered an ARP request for %s: %x", a, f)
		}
	}
}

func TestOversizedFrameEndsServe(t *testing.T) {
	n, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	vm, host := socketPair(t, unix.SOCK_STREAM)
	defer vm.Close()
	errc := make(chan error, 1)
	go func() { errc <- n.Serve(context.Background(), host) }()
	if _, err := vm.Write([]byte{0xff, 0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "longer than") {
			t.Fatalf("Serve after a 4 GiB length prefix: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not end on a broken stream")
	}
}

// TestServeEnds checks each way Serve ends — Close, context cancellation,
// the peer closing its socket — with traffic in flight (an outbound
// connection, a UDP flow, a port-forwarded connection), and that nothing
// is left running afterwards.
func TestServeEnds(t *testing.T) {
	for _, how := range []string{"close", "cancel", "peer"} {
		t.Run(how, func(t *testing.T) {
			base := runtime.NumGoroutine()
			lo := newLoopbackServer(t, "127.0.0.1:0")
			tp := freePort(t, "tcp")
			n, err := New(Config{AllowHostLoopback: true, Ports: []PortForward{{HostIP: "127.0.0.1", HostPort: tp, GuestPort: 80}}})
			if err != nil {
				t.Fatal(err)
			}
			vm, host := socketPair(t, unix.SOCK_STREAM)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- n.Serve(ctx, host) }()
			g := newTestGuest(t, vm, false)

			// Outbound TCP, left open mid-stream.
			c, err := g.dialTCP(ctx, netip.AddrPortFrom(GatewayAddr, lo.port()))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("half a request")); err != nil {
				t.Fatal(err)
			}
			// An outbound UDP flow.
			u, err := g.dialUDP(netip.AddrPortFrom(GatewayAddr, 9))
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			_, _ = u.Write([]byte("x"))
			// A forwarded connection held open by both sides.
			l, err := g.listenTCP(80)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			hc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tp))
			if err != nil {
				t.Fatal(err)
			}
			defer hc.Close()
			gc, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer gc.Close()
			waitFor(t, "the UDP flow", func() bool { return n.Stats().UDPFlows == 1 })

			start := time.Now()
			switch how {
			case "close":
				go n.Close()
			case "cancel":
				cancel()
			case "peer":
				g.close()
			}
			select {
			case err := <-errc:
				wantErr := map[string]error{"close": nil, "cancel": context.Canceled, "peer": nil}[how]
				if !errors.Is(err, wantErr) || (wantErr == nil && err != nil) {
					t.Errorf("Serve returned %v, want %v", err, wantErr)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return")
			}
			t.Logf("Serve returned %v after %s", how, time.Since(start))
			// The host side of the forwarded connection sees it end.
			_ = hc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := hc.Read(make([]byte, 1)); err == nil || isTimeout(err) {
				t.Errorf("forwarded host connection still open after Serve: %v", err)
			}
			// The forwarded port is released.
			if l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", tp)); err != nil {
				t.Errorf("port %d still bound after Serve: %v", tp, err)
			} else {
				l.Close()
			}
			_ = n.Close()
			g.close()
			c.Close()
			u.Close()
			l.Close()
			gc.Close()
			hc.Close()
			lo.l.Close()
			waitGoroutines(t, base)
		})
	}
}

func TestServeOnce(t *testing.T) {
	n, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	_ = n.Close()
	_, host := socketPair(t, unix.SOCK_STREAM)
	if err := n.Serve(context.Background(), host); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve after Close: %v, want ErrClosed", err)
	}
}

func TestRouteRule(t *testing.T) {
	own := hostAddress(t)
	n, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	allowLo, err := New(Config{AllowHostLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	defer allowLo.Close()
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		n      *Network
		dst    netip.AddrPort
		target string // "" = refused
	}{
		{n, ap("192.0.2.77:443"), "192.0.2.77:443"},
		{n, ap("8.8.8.8:53"), "8.8.8.8:53"},
		{n, ap("127.0.0.1:80"), ""},
		{n, ap("127.1.2.3:80"), ""},
		{n, ap("10.0.2.2:80"), ""},
		{n, netip.AddrPortFrom(own, 80), ""},
		{n, ap("0.0.0.0:80"), ""},
		{n, ap("0.1.2.3:80"), ""},
		{n, ap("224.0.0.251:5353"), ""},
		{n, ap("255.255.255.255:67"), ""},
		{n, ap("10.0.2.3:80"), ""},
		{n, ap("10.0.2.99:80"), ""},
		{n, ap("[::ffff:127.0.0.1]:80"), ""},
		{allowLo, ap("10.0.2.2:80"), "127.0.0.1:80"},
		{allowLo, ap("127.0.0.1:80"), "127.0.0.1:80"},
		{allowLo, netip.AddrPortFrom(own, 80), netip.AddrPortFrom(own, 80).String()},
		{allowLo, ap("10.0.2.99:80"), ""},
		{allowLo, ap("0.0.0.0:80"), ""},
	} {
		target, err := tc.n.route("tcp", tc.dst)
		switch {
		case tc.target == "" && err == nil:
			t.Errorf("route %s (allow loopback %v) = %s; want refused", tc.dst, tc.n.cfg.AllowHostLoopback, target)
		case tc.target != "" && (err != nil || target.String() != tc.target):
			t.Errorf("route %s (allow loopback %v) = %s, %v; want %s", tc.dst, tc.n.cfg.AllowHostLoopback, target, err, tc.target)
		}
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func tcpLink(mac []byte) tcpip.LinkAddress { return tcpip.LinkAddress(mac) }

// rawGuest drives a Network's link frame by frame, as a hostile guest with
// raw sockets could.
type rawGuest struct {
	rawLink
	n *Network
}

// rawServe serves cfg to a raw link and introduces the guest with an ARP
// request, so the stack knows its MAC.
func rawServe(t *testing.T, cfg Config) rawGuest {
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	vm, host := socketPair(t, unix.SOCK_STREAM)
	errc := make(chan error, 1)
	go func() { errc <- n.Serve(context.Background(), host) }()
	t.Cleanup(func() {
		_ = n.Close()
		<-errc
		vm.Close()
	})
	r := rawGuest{rawLink{t, vm}, n}
	r.send(arpRequest(GatewayAddr))
	if f := r.recv(10 * time.Second); f == nil || header.Ethernet(f).Type() != header.ARPProtocolNumber {
		t.Fatalf("no ARP reply from the gateway: %x", f)
	}
	return r
}

// recvTCP returns the next TCP frame from src, answering the stack's ARP
// requests for the guest meanwhile.
func (r rawGuest) recvTCP(t *testing.T, src netip.AddrPort) []byte {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		f := r.recv(time.Until(deadline))
		if f == nil {
			break
		}
		eth := header.Ethernet(f)
		if eth.Type() != header.IPv4ProtocolNumber {
			continue
		}
		ip := header.IPv4(f[header.EthernetMinimumSize:])
		if ip.TransportProtocol() != header.TCPProtocolNumber {
			continue
		}
		if netipAddr(ip.SourceAddress()) == src.Addr() && header.TCP(ip.Payload()).SourcePort() == src.Port() {
			return f
		}
	}
	t.Fatalf("no TCP segment from %s", src)
	return nil
}

func ipv4Frame(proto tcpip.TransportProtocolNumber, dst netip.Addr, payload []byte) []byte {
	f := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+len(payload))
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpLink(guestMAC), DstAddr: gatewayMAC, Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + len(payload)), TTL: 64, Protocol: uint8(proto),
		SrcAddr: tcpAddr(GuestAddr), DstAddr: tcpAddr(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(ip.Payload(), payload)
	return f
}

func tcpSYN(dst netip.AddrPort, srcPort uint16) []byte {
	h := header.TCP(make([]byte, header.TCPMinimumSize))
	h.Encode(&header.TCPFields{
		SrcPort: srcPort, DstPort: dst.Port(), SeqNum: 1000, DataOffset: header.TCPMinimumSize,
		Flags: header.TCPFlagSyn, WindowSize: 65535,
	})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpAddr(GuestAddr), tcpAddr(dst.Addr()), uint16(len(h)))
	h.SetChecksum(^h.CalculateChecksum(xsum))
	return ipv4Frame(header.TCPProtocolNumber, dst.Addr(), h)
}

func udpDatagram(dst netip.AddrPort, srcPort uint16, payload []byte) []byte {
	u := header.UDP(make([]byte, header.UDPMinimumSize+len(payload)))
	u.Encode(&header.UDPFields{SrcPort: srcPort, DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, tcpAddr(GuestAddr), tcpAddr(dst.Addr()), uint16(len(u)))
	xsum = checksum.Checksum(payload, xsum)
	u.SetChecksum(^u.CalculateChecksum(xsum))
	return ipv4Frame(header.UDPProtocolNumber, dst.Addr(), u)
}

func TestUDPFlowsEndWhenIdle(t *testing.T) {
	echo, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = echo.WriteTo(buf[:n], from)
		}
	}()
	up := freePort(t, "udp")
	sv := serve(t, Config{AllowHostLoopback: true, Ports: []PortForward{{Protocol: "udp", HostIP: "127.0.0.1", HostPort: up, GuestPort: 7}}},
		unix.SOCK_STREAM, func(n *Network) { n.udpIdle = 300 * time.Millisecond })

	// Outbound: a flow that keeps talking outlives the idle timeout.
	u, err := sv.guest.dialUDP(netip.AddrPortFrom(GatewayAddr, uint16(echo.LocalAddr().(*net.UDPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := range 8 {
		if r, err := udpRoundTrip(u, fmt.Sprint(i)); err != nil || r != fmt.Sprint(i) {
			t.Fatalf("round trip %d: %q, %v", i, r, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := sv.n.Stats(); st.UDPFlows != 1 {
		t.Fatalf("a busy flow was replaced: %d flows", st.UDPFlows)
	}
	// Inbound: a forwarded client's flow.
	gl, err := sv.guest.listenUDP(7)
	if err != nil {
		t.Fatal(err)
	}
	defer gl.Close()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := gl.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = gl.WriteTo(buf[:n], from)
		}
	}()
	hu, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", up))
	if err != nil {
		t.Fatal(err)
	}
	defer hu.Close()
	if r, err := udpRoundTrip(hu, "in"); err != nil || r != "in" {
		t.Fatalf("forwarded round trip: %q, %v", r, err)
	}
	if st := sv.n.Stats(); st.OpenUDP != 2 {
		t.Fatalf("OpenUDP = %d, want 2", st.OpenUDP)
	}
	waitFor(t, "idle flows to end", func() bool { return sv.n.Stats().OpenUDP == 0 })
	// And a new datagram starts a new flow.
	if r, err := udpRoundTrip(u, "again"); err != nil || r != "again" {
		t.Fatalf("after idle: %q, %v", r, err)
	}
	if st := sv.n.Stats(); st.UDPFlows != 2 {
		t.Fatalf("UDPFlows = %d after the idle flow ended, want 2", st.UDPFlows)
	}
}

// TestGuestPortReuseAfterRemoteClose: when the remote end closes first, the
// guest may reuse its port for the next connection at once (its side is
// not in TIME-WAIT); the stack must take that SYN instead of holding the
// old 4-tuple for a minute.
func TestGuestPortReuseAfterRemoteClose(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	sv := serve(t, Config{AllowHostLoopback: true}, unix.SOCK_STREAM)
	dst := tcpip.FullAddress{NIC: 1, Addr: tcpAddr(GatewayAddr), Port: uint16(l.Addr().(*net.TCPAddr).Port)}
	local := tcpip.FullAddress{NIC: 1, Addr: tcpAddr(GuestAddr), Port: 40000}
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var c *gonet.TCPConn
		for {
			c, err = gonet.DialTCPWithBind(ctx, sv.guest.s, local, dst, ipv4.ProtocolNumber)
			if err == nil || !strings.Contains(err.Error(), "port is in use") || ctx.Err() != nil {
				break
			}
			time.Sleep(5 * time.Millisecond) // the guest's own LAST-ACK
		}
		cancel()
		if err != nil {
			t.Fatalf("connection %d from guest port %d: %v", i, local.Port, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("connection %d: read %v, want EOF", i, err)
		}
		c.Close()
	}
}

func icmpEcho(dst netip.Addr, id uint16) []byte {
	h := header.ICMPv4(make([]byte, header.ICMPv4MinimumSize+4))
	h.SetType(header.ICMPv4Echo)
	h.SetIdent(id)
	h.SetSequence(1)
	copy(h.Payload(), "ping")
	h.SetChecksum(0)
	h.SetChecksum(^checksum.Checksum(h, 0))
	return ipv4Frame(header.ICMPv4ProtocolNumber, dst, h)
}

// recvICMP returns the next ICMP frame, or nil if none comes within d.
func (r rawGuest) recvICMP(d time.Duration) []byte {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		f := r.recv(time.Until(deadline))
		if f == nil {
			return nil
		}
		if header.Ethernet(f).Type() == header.IPv4ProtocolNumber &&
			header.IPv4(f[header.EthernetMinimumSize:]).TransportProtocol() == header.ICMPv4ProtocolNumber {
			return f
		}
	}
	return nil
}

// TestPingAnsweredOnlyByServedAddresses: the stack answers echo requests
// for the gateway and DNS addresses; for any other destination it must not
// fake a reply it never got from that host.
func TestPingAnsweredOnlyByServedAddresses(t *testing.T) {
	r := rawServe(t, Config{})
	for i, a := range []netip.Addr{GatewayAddr, DNSAddr} {
		r.send(icmpEcho(a, uint16(i+1)))
		f := r.recvICMP(10 * time.Second)
		if f == nil {
			t.Fatalf("no echo reply from %s", a)
		}
		ip := header.IPv4(f[header.EthernetMinimumSize:])
		if netipAddr(ip.SourceAddress()) != a || header.ICMPv4(ip.Payload()).Type() != header.ICMPv4EchoReply {
			t.Fatalf("ping %s: got ICMP type %d from %s", a, header.ICMPv4(ip.Payload()).Type(), netipAddr(ip.SourceAddress()))
		}
	}
	for _, a := range []netip.Addr{netip.MustParseAddr("192.0.2.77"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.0.2.99")} {
		r.send(icmpEcho(a, 9))
		if f := r.recvICMP(500 * time.Millisecond); f != nil {
			t.Fatalf("ping %s was answered by the stack: %x", a, f)
		}
	}
}

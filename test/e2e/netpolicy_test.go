package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// remoteNet is a network namespace joined to the host by a veth pair: the
// test's servers listen at srv there, an address that is not the host's,
// as a machine elsewhere would. The host's end is host.
type remoteNet struct {
	name      string
	host, srv string
}

func newRemoteNet(t *testing.T) *remoteNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace (the test servers must be on an address that is not the host's)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip to create a network namespace")
	}
	id := fmt.Sprintf("%06x", rand.Uint32()&0xffffff)
	third, fourth := rand.IntN(256), rand.IntN(64)*4
	r := &remoteNet{name: "bxe2e-" + id, host: fmt.Sprintf("10.200.%d.%d", third, fourth+1), srv: fmt.Sprintf("10.200.%d.%d", third, fourth+2)}
	vh, vg := "bxe"+id+"h", "bxe"+id+"g"
	ip := func(args ...string) error {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := ip("netns", "add", r.name); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	t.Cleanup(func() {
		_ = ip("link", "del", vh)
		_ = ip("netns", "del", r.name)
	})
	for _, args := range [][]string{
		{"link", "add", vh, "type", "veth", "peer", "name", vg, "netns", r.name},
		{"addr", "add", r.host + "/30", "dev", vh},
		{"link", "set", vh, "up"},
		{"-n", r.name, "addr", "add", r.srv + "/30", "dev", vg},
		{"-n", r.name, "link", "set", vg, "up"},
		{"-n", r.name, "link", "set", "lo", "up"},
	} {
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// inside runs fn on a thread that has joined the namespace, so the sockets
// it opens live there. The thread is thrown away afterwards (its goroutine
// ends locked to it).
func (r *remoteNet) inside(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+r.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("join network namespace %s: %w", r.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// countingServer answers every TCP connection with its greeting and counts
// them.
type countingServer struct {
	l     net.Listener
	conns atomic.Int64
}

func (r *remoteNet) tcpServer(t *testing.T, greeting string) (*countingServer, int) {
	t.Helper()
	s := &countingServer{}
	if err := r.inside(func() (err error) { s.l, err = net.Listen("tcp4", r.srv+":0"); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := s.l.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			fmt.Fprintln(c, greeting)
			c.Close()
		}
	}()
	t.Cleanup(func() { s.l.Close(); wg.Wait() })
	return s, s.l.Addr().(*net.TCPAddr).Port
}

// dnsServer answers every A query at srv:53 (UDP) with 192.0.2.10 and
// counts the queries: a box that reaches it got around the policy.
func (r *remoteNet) dnsServer(t *testing.T) *atomic.Int64 {
	t.Helper()
	var pc net.PacketConn
	if err := r.inside(func() (err error) { pc, err = net.ListenPacket("udp4", r.srv+":53"); return err }); err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			n.Add(1)
			var m dnsmessage.Message
			if m.Unpack(buf[:k]) != nil || len(m.Questions) != 1 {
				continue
			}
			m.Header.Response = true
			m.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
				Body:   &dnsmessage.AResource{A: [4]byte{192, 0, 2, 10}},
			}}
			if b, err := m.Pack(); err == nil {
				_, _ = pc.WriteTo(b, from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return &n
}

// TestNetworkAllowList: a box allowed one port of one remote host reaches
// that port and nothing else, however a root shell in the guest tries.
func TestNetworkAllowList(t *testing.T) {
	rn := newRemoteNet(t)
	allowed, allowedPort := rn.tcpServer(t, "allowed-port")
	other, otherPort := rn.tcpServer(t, "other-port")
	dnsQueries := rn.dnsServer(t)
	e := newEnv(t)

	e.ok("run", "-d", "--name", "pol", "--allow-net", fmt.Sprintf("%s:%d", rn.srv, allowedPort), e.image)
	if out := strings.TrimSpace(e.ok("exec", "pol", "--", "id", "-u")); out != "0" {
		t.Fatalf("the guest shell is uid %q, want root", out)
	}
	nc := func(addr string, port int) (string, int) {
		out, _, code := e.run(nil, "exec", "pol", "--", "sh", "-c", fmt.Sprintf("nc -w 5 %s %d </dev/null", addr, port))
		return strings.TrimSpace(out), code
	}
	// Control: without this the refusals below prove nothing.
	if out, code := nc(rn.srv, allowedPort); code != 0 || out != "allowed-port" {
		t.Fatalf("the allowed port %s:%d: exit %d, %q", rn.srv, allowedPort, code, out)
	}
	if out, code := nc(rn.srv, otherPort); code == 0 && out != "" {
		t.Errorf("another port of the allowed host answered: %q", out)
	}
	// The same port on the host's end of the veth pair (one of the host's
	// own addresses, closed in every mode).
	if out, code := nc(rn.host, allowedPort); code == 0 && out != "" {
		t.Errorf("the host's own address answered: %q", out)
	}
	// Raw IP: ICMP is never forwarded, whoever sends it.
	if out, _, code := e.run(nil, "exec", "pol", "--", "ping", "-c", "1", "-W", "2", rn.srv); code == 0 {
		t.Errorf("ping %s from the guest succeeded: %s", rn.srv, out)
	}
	// DNS straight to another server, and a name not on the list through
	// the box's own resolver.
	if out, _, code := e.run(nil, "exec", "pol", "--", "nslookup", "example.com", rn.srv); code == 0 && strings.Contains(out, "192.0.2.10") {
		t.Errorf("nslookup through %s answered: %s", rn.srv, out)
	}
	if out, errs, _ := e.run(nil, "exec", "pol", "--", "nslookup", "example.com"); !strings.Contains(out+errs, "REFUSED") {
		t.Errorf("a name not on the list was not refused by the box's resolver: %s %s", out, errs)
	}
	if n := other.conns.Load(); n != 0 {
		t.Errorf("the other port's server saw %d connections", n)
	}
	if n := dnsQueries.Load(); n != 0 {
		t.Errorf("the other DNS server got %d queries", n)
	}
	if n := allowed.conns.Load(); n != 1 {
		t.Errorf("the allowed server saw %d connections, want 1", n)
	}
	// The refusals are counted where an operator looks.
	var denied string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		lines := strings.Split(strings.TrimSpace(e.ok("stats", "pol")), "\n")
		f := strings.Fields(lines[len(lines)-1])
		if denied = f[len(f)-1]; denied != "0" && denied != "-" {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if denied == "0" || denied == "-" {
		t.Errorf("boxctl stats shows NET DENIED %s after refused connections", denied)
	}
	if out := e.ok("inspect", "pol"); !strings.Contains(out, fmt.Sprintf(`"allow_net": [
        "%s:%d"`, rn.srv, allowedPort)) {
		t.Errorf("inspect does not show the allow-list:\n%s", out)
	}
	e.ok("rm", "-f", "pol")

	// Without a network there is nothing to get around: no NIC, no route.
	out := e.ok("run", "--rm", "--network", "none", e.image, "--", "sh", "-c",
		fmt.Sprintf("ip route; ip -o link | grep -v ' lo:' ; nc -w 3 %s %d </dev/null && echo CONNECTED; exit 0", rn.srv, allowedPort))
	if strings.Contains(out, "default") || strings.Contains(out, "eth0") || strings.Contains(out, "CONNECTED") {
		t.Errorf("--network none: the guest has a route, a NIC or a connection:\n%s", out)
	}
	if n := allowed.conns.Load(); n != 1 {
		t.Errorf("a box without network reached the server (%d connections)", n)
	}
}

// zoneServer answers A queries at srv:53 (UDP) for the names in zone
// (fully qualified, with the final dot) and NXDOMAIN for every other name;
// it counts the queries per name.
func (r *remoteNet) zoneServer(t *testing.T, zone map[string][4]byte) *sync.Map {
	t.Helper()
	var pc net.PacketConn
	if err := r.inside(func() (err error) { pc, err = net.ListenPacket("udp4", r.srv+":53"); return err }); err != nil {
		t.Fatal(err)
	}
	var asked sync.Map // name -> *atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:k]) != nil || len(m.Questions) != 1 {
				continue
			}
			q := m.Questions[0]
			n, _ := asked.LoadOrStore(strings.ToLower(q.Name.String()), new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
			m.Header.Response, m.Header.Authoritative = true, true
			addr, ok := zone[strings.ToLower(q.Name.String())]
			switch {
			case !ok:
				m.Header.RCode = dnsmessage.RCodeNameError
			case q.Type == dnsmessage.TypeA:
				m.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
					Body:   &dnsmessage.AResource{A: addr},
				}}
			}
			if b, err := m.Pack(); err == nil {
				_, _ = pc.WriteTo(b, from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return &asked
}

// TestNetworkAllowHostName: a box allowed one port of a host NAME reaches
// it by that name (resolved by the host, through the nameserver of the
// qemu plugin's resolv_conf, a DNS server this test runs in its network
// namespace), and reaches nothing else: not another port of the address
// the name resolved to, not another name.
func TestNetworkAllowHostName(t *testing.T) {
	rn := newRemoteNet(t)
	allowed, allowedPort := rn.tcpServer(t, "allowed-port")
	other, otherPort := rn.tcpServer(t, "other-port")
	var srv [4]byte
	copy(srv[:], net.ParseIP(rn.srv).To4())
	asked := rn.zoneServer(t, map[string][4]byte{"api.boxctl.test.": srv, "other.boxctl.test.": srv})
	e := newEnv(t)
	resolv := filepath.Join(e.home, "resolv.conf")
	if err := os.MkdirAll(e.home, 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, resolv, "nameserver "+rn.srv+"\n")
	writeQEMUConfig(t, e, fmt.Sprintf("resolv_conf = %q", resolv))

	e.ok("run", "-d", "--name", "byname", "--allow-net", fmt.Sprintf("api.boxctl.test:%d", allowedPort), e.image)
	nc := func(addr string, port int) (string, int) {
		out, _, code := e.run(nil, "exec", "byname", "--", "sh", "-c", fmt.Sprintf("nc -w 5 %s %d </dev/null", addr, port))
		return strings.TrimSpace(out), code
	}
	// Control: the listed name and port answer.
	if out, code := nc("api.boxctl.test", allowedPort); code != 0 || out != "allowed-port" {
		t.Fatalf("the allowed name api.boxctl.test:%d: exit %d, %q (DNS queries: %v)", allowedPort, code, out, names(asked))
	}
	if out, code := nc("api.boxctl.test", otherPort); code == 0 && out != "" {
		t.Errorf("another port of the allowed name answered: %q", out)
	}
	if out, code := nc(rn.srv, otherPort); code == 0 && out != "" {
		t.Errorf("another port of the allowed name's address answered: %q", out)
	}
	// A name off the list is not resolved for the box, and not asked of
	// the nameserver on its behalf.
	if out, errs, _ := e.run(nil, "exec", "byname", "--", "nslookup", "other.boxctl.test"); !strings.Contains(out+errs, "REFUSED") {
		t.Errorf("a name off the list was not refused by the box's resolver: %s %s", out, errs)
	}
	if _, ok := asked.Load("other.boxctl.test."); ok {
		t.Error("the nameserver was asked for a name off the list")
	}
	if _, ok := asked.Load("api.boxctl.test."); !ok {
		t.Error("the nameserver of resolv_conf was never asked for the allowed name")
	}
	if n := other.conns.Load(); n != 0 {
		t.Errorf("the other port's server saw %d connections", n)
	}
	if n := allowed.conns.Load(); n != 1 {
		t.Errorf("the allowed server saw %d connections, want 1", n)
	}
	e.ok("rm", "-f", "byname")
}

// names lists the names a zoneServer was asked, for failure messages.
func names(asked *sync.Map) []string {
	var out []string
	asked.Range(func(k, v any) bool {
		out = append(out, fmt.Sprintf("%s×%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	return out
}

package usernet

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// expectRefused dials dst from the guest and fails unless it gets a reset.
func expectRefused(t *testing.T, g *testGuest, dst netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := g.dialTCP(ctx, dst)
	if err == nil {
		c.Close()
		t.Fatalf("guest connected to %s, which the allow-list does not name", dst)
	}
	if !isRefused(err) {
		t.Fatalf("dial %s: %v; want connection refused", dst, err)
	}
}

func expectConnects(t *testing.T, g *testGuest, dst netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := g.dialTCP(ctx, dst)
	if err != nil {
		t.Fatalf("guest dial %s, which the allow-list names: %v", dst, err)
	}
	got, err := exchangeTCP(c, "hi")
	if err != nil || got != "got 2: hi" {
		t.Fatalf("exchange with %s: %q, %v", dst, got, err)
	}
}

func TestAllowListCIDRAndPort(t *testing.T) {
	srv := startRemoteServer(t)
	dns := startDNSServer(t)
	rc := writeResolvConf(t, "nameserver "+dns.addr.String())
	rules := []AllowRule{{Prefix: netip.PrefixFrom(srv.addr, 32), Port: srv.tcpPort}}
	sv := serve(t, Config{Allow: rules, ResolvConf: rc}, unix.SOCK_STREAM)

	expectConnects(t, sv.guest, srv.tcp())
	// Another port of the same host, and the same port of the host's end of
	// the veth pair (a different address).
	expectRefused(t, sv.guest, netip.AddrPortFrom(srv.addr, srv.httpPort))
	expectRefused(t, sv.guest, netip.AddrPortFrom(srv.hostAddr, srv.tcpPort))

	// UDP to the allowed host but another port (its echo server), and a
	// query straight to another nameserver: dropped, no answer.
	for _, dst := range []netip.AddrPort{srv.udp(), netip.AddrPortFrom(srv.addr, 53), netip.MustParseAddrPort("192.0.2.53:53")} {
		u, err := sv.guest.dialUDP(dst)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := u.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = u.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := u.Read(make([]byte, 512)); err == nil {
			t.Errorf("UDP to %s answered (%d bytes); the allow-list does not name it", dst, n)
		}
		u.Close()
	}
	// The box's own DNS address resolves nothing: no name is allowed.
	if m := guestLookup(t, sv.guest, "anything.test.", false); m.Header.RCode != dnsmessage.RCodeRefused {
		t.Errorf("lookup of a name not on the list: rcode %v, want REFUSED", m.Header.RCode)
	}
	if got := dns.asked(); len(got) != 0 {
		t.Errorf("the host's nameserver was asked %q; nothing should have reached it", got)
	}
	st := sv.n.Stats()
	if st.DeniedTCP != 2 || st.DeniedUDP != 3 || st.DNSRefused != 1 || st.TCPConns != 1 {
		t.Errorf("stats: denied %d TCP (want 2), %d UDP (want 3), %d DNS refused (want 1), %d connections (want 1)",
			st.DeniedTCP, st.DeniedUDP, st.DNSRefused, st.TCPConns)
	}
	for _, d := range st.RecentDenials {
		if d.Dst.Addr() != srv.hostAddr && d.Reason != errNotAllowed.Error() {
			t.Errorf("denial %+v: reason %q, want %q", d, d.Reason, errNotAllowed)
		}
	}
}

func TestAllowListCannotWidenHostRule(t *testing.T) {
	lo := newLoopbackServer(t, "127.0.0.1:0")
	rules := []AllowRule{{Prefix: netip.MustParsePrefix("0.0.0.0/0")}}
	sv := serve(t, Config{Allow: rules}, unix.SOCK_STREAM)
	expectRefused(t, sv.guest, netip.AddrPortFrom(GatewayAddr, lo.port()))
	if lo.count() != 0 {
		t.Errorf("the host's loopback server accepted %d connections", lo.count())
	}
}

func TestAllowListHostNameFollowsTTL(t *testing.T) {
	srv := startRemoteServer(t)
	dns := startDNSServer(t)
	dns.setAnswer(srv.addr, 1) // kept for minNameTTL
	rc := writeResolvConf(t, "nameserver "+dns.addr.String())
	rules := []AllowRule{{Host: "allowed.test", Port: srv.tcpPort}}
	sv := serve(t, Config{Allow: rules, ResolvConf: rc}, unix.SOCK_STREAM)

	// The host resolves the name by itself, before the guest asks.
	waitFor(t, "the host to resolve allowed.test", func() bool { return slices.Contains(dns.asked(), "allowed.test.") })
	expectConnects(t, sv.guest, srv.tcp())
	expectRefused(t, sv.guest, netip.AddrPortFrom(srv.addr, srv.httpPort))

	if m := guestLookup(t, sv.guest, "ALLOWED.test.", true); m.Header.RCode != dnsmessage.RCodeSuccess || answerA(m) != srv.addr.String() {
		t.Errorf("guest lookup of the allowed name: rcode %v, answer %q; want %s", m.Header.RCode, answerA(m), srv.addr)
	}
	if m := guestLookup(t, sv.guest, "other.test.", false); m.Header.RCode != dnsmessage.RCodeRefused {
		t.Errorf("guest lookup of another name: rcode %v, want REFUSED", m.Header.RCode)
	}
	if slices.Contains(dns.asked(), "other.test.") {
		t.Error("a name not on the list reached the host's nameserver")
	}

	// The name moves: once the old answer's TTL is over, the old address
	// is no longer allowed.
	dns.setAnswer(netip.MustParseAddr("192.0.2.1"), 60)
	time.Sleep(minNameTTL + time.Second)
	waitFor(t, "the old address to expire", func() bool { return sv.n.allow.allow(srv.tcp()) != nil })
	expectRefused(t, sv.guest, srv.tcp())
	if err := sv.n.allow.allow(netip.MustParseAddrPort("192.0.2.1:" + itoa(srv.tcpPort))); err != nil {
		t.Errorf("the name's new address is not allowed: %v", err)
	}
	// The new answer's TTL is a minute: the host does not ask again within
	// the next few seconds.
	asked := len(dns.asked())
	time.Sleep(minNameTTL + time.Second)
	if n := len(dns.asked()) - asked; n != 0 {
		t.Errorf("the host asked %d more times within seconds of an answer with a 60 s TTL", n)
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

func TestNewRefusesBadAllowRule(t *testing.T) {
	for _, r := range []AllowRule{{}, {Host: "bad name"}, {Prefix: netip.MustParsePrefix("10.1.2.3/16")}} {
		if n, err := New(Config{Allow: []AllowRule{r}}); err == nil {
			n.Close()
			t.Errorf("New accepted allow rule %+v", r)
		}
	}
}

func TestReportStatsWritesDenials(t *testing.T) {
	sv := serve(t, Config{Allow: []AllowRule{{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Port: 443}}}, unix.SOCK_STREAM)
	path := filepath.Join(t.TempDir(), StatsFileName)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); sv.n.ReportStats(ctx, path, 10*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	expectRefused(t, sv.guest, netip.MustParseAddrPort("192.0.2.1:80"))
	waitFor(t, "the stats file to show the denial", func() bool {
		st, err := ReadStatsFile(path)
		return err == nil && st.DeniedTCP == 1
	})
	st, _ := ReadStatsFile(path)
	if len(st.RecentDenials) != 1 || st.RecentDenials[0].Dst.String() != "192.0.2.1:80" || st.RecentDenials[0].Reason != errNotAllowed.Error() {
		t.Errorf("recent denials in the file: %+v", st.RecentDenials)
	}
	if m := st.Metrics(); m["net_denied_tcp"] != 1 {
		t.Errorf("metrics: %v", m)
	}
}

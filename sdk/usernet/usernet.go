package usernet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// The guest-visible addresses: the guest boot contract's (QEMU slirp's
// layout).
var (
	Subnet      = guestboot.Subnet
	GatewayAddr = guestboot.GatewayAddr
	DNSAddr     = guestboot.DNSAddr
	GuestAddr   = guestboot.GuestAddr
)

// MTU is the guest link's IP MTU.
const MTU = 1500

// gatewayMAC is the stack's MAC for 10.0.2.2 and 10.0.2.3 (slirp uses
// 52:55 followed by the IPv4 address).
const gatewayMAC = tcpip.LinkAddress("\x52\x55\x0a\x00\x02\x02")

const (
	nicID = 1

	// dialTimeout bounds a host dial for a guest connection; the guest sees
	// a reset when it expires.
	dialTimeout = 20 * time.Second
	// guestDialTimeout bounds dialling into the guest for a port forward.
	guestDialTimeout = 10 * time.Second
	// defaultUDPIdle ends a UDP flow (outbound NAT or port forward) that
	// has seen no datagram either way for this long.
	defaultUDPIdle = 60 * time.Second

	// Caps on what one guest can make the host hold.
	maxTCPConns  = 4096
	maxUDPFlows  = 1024
	maxInFlight  = 512 // TCP handshakes being dialled at once
	maxDNSActive = 64  // DNS queries being forwarded at once
)

// ErrPortInUse is wrapped by New's error when a host port of a port forward
// is already bound by someone else.
var ErrPortInUse = errors.New("host port already in use")

// ErrClosed is returned by Serve when the Network was closed or already
// served.
var ErrClosed = errors.New("usernet: network closed or already served")

// PortForward forwards HostIP:HostPort on the host to GuestPort on the
// guest: the VM spec's (Protocol "tcp" also when empty; HostIP empty means
// every host address, IPv4 and IPv6).
type PortForward = sdk.PortForward

// Config configures a Network.
type Config struct {
	// AllowHostLoopback lifts the host-protection rule: the gateway
	// 10.0.2.2:P then reaches 127.0.0.1:P, and the host's loopback and own
	// addresses become reachable.
	AllowHostLoopback bool
	// Ports are bound on the host by New.
	Ports []PortForward
	// Allow, when not empty, is an egress allow-list checked after the
	// host-protection rule (which it cannot widen): only destinations it
	// names are dialled, only its host names resolve at DNSAddr, and
	// everything else — other nameservers included — is refused and
	// counted. Host names are resolved by the host's nameservers and kept
	// for the answers' TTLs (5 s to 1 h), re-resolved as they end.
	Allow []AllowRule
	// Policy is an extra rule checked after the host-protection rule and
	// Allow; nil
	// allows everything that rule allows.
	Policy Policy
	// Logger receives debug logs of refused destinations and failed dials;
	// nil discards.
	Logger *slog.Logger
	// ResolvConf is the file the DNS forwarder reads the host's nameservers
	// from; empty means /etc/resolv.conf.
	ResolvConf string
}

// Network is the user-mode network of one VM. It serves one guest link once:
// New, then Serve until the link ends, then Close.
type Network struct {
	cfg      Config
	log      *slog.Logger
	hostAddr *hostAddrs
	dns      *dnsForwarder
	allow    *allowList // nil: no allow-list
	stats    counters
	udpIdle  time.Duration

	tcpForwards []*tcpForward
	udpForwards []*udpForward

	mu        sync.Mutex
	started   bool
	closed    bool
	done      chan struct{} // closed by Close
	serveDone chan struct{} // closed when Serve has torn down
	closeOnce sync.Once

	listenersOnce sync.Once
}

// New validates cfg and binds the host listeners of its port forwards; it
// starts no goroutines. The error names the address of a port that cannot
// be bound and wraps ErrPortInUse when it is taken.
func New(cfg Config) (*Network, error) {
	n := &Network{
		cfg:      cfg,
		log:      cfg.Logger,
		hostAddr: newHostAddrs(),
		udpIdle:  defaultUDPIdle,
		done:     make(chan struct{}),
	}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	rc := cfg.ResolvConf
	if rc == "" {
		rc = "/etc/resolv.conf"
	}
	if len(cfg.Allow) > 0 {
		a, err := newAllowList(cfg.Allow)
		if err != nil {
			return nil, err
		}
		n.allow = a
	}
	n.dns = newDNSForwarder(rc, cfg.Policy, n.log, &n.stats)
	n.dns.allow = n.allow
	if err := n.bindPorts(cfg.Ports); err != nil {
		n.closeListeners()
		return nil, err
	}
	return n, nil
}

// Serve runs the guest link over conn until the peer closes it, ctx ends or
// Close is called, then tears everything down: every forwarded connection
// and flow, the port-forward listeners and the stack. It closes conn. It
// returns nil when the peer closed the link or Close was called, ctx.Err()
// when ctx ended, and the I/O error otherwise. A Network serves once.
func (n *Network) Serve(ctx context.Context, conn net.Conn) error {
	n.mu.Lock()
	if n.started || n.closed {
		n.mu.Unlock()
		_ = conn.Close()
		return ErrClosed
	}
	n.started = true
	n.serveDone = make(chan struct{})
	n.mu.Unlock()
	defer close(n.serveDone)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	link := newLink(conn, &n.stats)
	s, err := n.newStack(link)
	if err != nil {
		_ = conn.Close()
		n.closeListeners()
		return err
	}
	sv := &session{n: n, s: s, ctx: ctx}

	if err := sv.startServices(); err != nil {
		_ = conn.Close()
		n.closeListeners()
		s.Close()
		s.Wait()
		return err
	}

	readErr := make(chan error, 1)
	go func() { readErr <- link.readLoop() }()

	var result error
	select {
	case err := <-readErr:
		readErr = nil
		if err != nil && !peerGone(err) {
			result = fmt.Errorf("usernet: guest link: %w", err)
		}
	case <-link.failed:
		if !peerGone(link.failErr) {
			result = fmt.Errorf("usernet: guest link: %w", link.failErr)
		}
	case <-ctx.Done():
		result = ctx.Err()
	case <-n.done:
	}
	// Tear down from the outside in: no more frames from the guest, no more
	// host connections, then every proxy, then the stack's own workers.
	_ = conn.Close()
	if readErr != nil {
		<-readErr
	}
	cancel()
	n.closeListeners()
	// Closing the stack before waiting also ends handshakes still waiting
	// for a guest that will never answer.
	sv.tr.closeAll()
	s.Close()
	sv.tr.shutdown()
	s.Wait()
	return result
}

// peerGone reports whether a link error means the VMM closed its end (or
// exited): EOF on a stream, a reset when it exited with frames unread, a
// refused or broken write when it is gone.
func peerGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}

// Close ends Serve (waiting for its teardown) and releases the port
// listeners. It is safe to call more than once and without Serve.
func (n *Network) Close() error {
	n.mu.Lock()
	n.closed = true
	serveDone := n.serveDone
	n.mu.Unlock()
	n.closeOnce.Do(func() { close(n.done) })
	if serveDone != nil {
		<-serveDone
	}
	n.closeListeners()
	return nil
}

// newStack builds the host side of the guest link: one NIC holding the
// gateway and DNS addresses, promiscuous and spoofing so it terminates
// connections to every destination and answers as that destination.
func (n *Network) newStack(link *linkEndpoint) (*stack.Stack, error) {
	s := stack.New(stack.Options{
		// Packets to 127.0.0.0/8 are let through the IP layer so that they
		// meet the host-protection rule like every other destination:
		// refused (and counted) by default, the host's loopback with
		// AllowHostLoopback.
		NetworkProtocols: []stack.NetworkProtocolFactory{
			ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: true}),
			arp.NewProtocol,
		},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	fail := func(what string, err tcpip.Error) (*stack.Stack, error) {
		s.Close()
		s.Wait()
		return nil, fmt.Errorf("usernet: %s: %s", what, err)
	}
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fail("enable TCP SACK", err)
	}
	// No TIME-WAIT on the stack's side of a guest connection. When the
	// remote end closes first, the stack's endpoint would hold the guest's
	// 4-tuple for a minute and ignore a new SYN from the same guest port (a
	// forwarder, unlike a listener, is not offered SYNs that hit TIME-WAIT),
	// stalling that connect for the whole minute. On a virtual link there
	// are no stray old segments for TIME-WAIT to absorb; the one loss it
	// covers (our last ACK) costs the guest a reset instead of a clean close.
	tw := tcpip.TCPTimeWaitTimeoutOption(0)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); err != nil {
		return fail("set TCP TIME-WAIT", err)
	}
	if err := s.CreateNICWithOptions(nicID, ethernet.New(link), stack.NICOptions{Name: "usernet0"}); err != nil {
		return fail("create NIC", err)
	}
	for _, a := range []netip.Addr{GatewayAddr, DNSAddr} {
		pa := tcpip.ProtocolAddress{
			Protocol:          ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(a), PrefixLen: Subnet.Bits()},
		}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fail("add address "+a.String(), err)
		}
	}
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fail("set promiscuous mode", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fail("set spoofing", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})
	return s, nil
}

// session is one Serve call: the stack and everything running on it.
type session struct {
	n   *Network
	s   *stack.Stack
	ctx context.Context
	tr  tracker
}

func (sv *session) startServices() error {
	tcpFwd := tcp.NewForwarder(sv.s, 0, maxInFlight, sv.handleTCP)
	sv.s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	udpFwd := udp.NewForwarder(sv.s, sv.handleUDP)
	sv.s.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)

	dnsTCP, err := gonet.ListenTCP(sv.s, fullAddr(netip.AddrPortFrom(DNSAddr, 53)), ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("usernet: listen on %s:53/tcp: %w", DNSAddr, err)
	}
	dnsUDP, err := gonet.DialUDP(sv.s, ptr(fullAddr(netip.AddrPortFrom(DNSAddr, 53))), nil, ipv4.ProtocolNumber)
	if err != nil {
		_ = dnsTCP.Close()
		return fmt.Errorf("usernet: listen on %s:53/udp: %w", DNSAddr, err)
	}
	sv.tr.add(dnsTCP)
	sv.tr.add(dnsUDP)
	sv.tr.goTracked(func() { sv.serveDNSTCP(dnsTCP) })
	sv.tr.goTracked(func() { sv.serveDNSUDP(dnsUDP) })

	if a := sv.n.allow; a != nil && len(a.hosts) > 0 {
		sv.tr.goTracked(func() { sv.resolveLoop(a) })
	}
	for _, f := range sv.n.tcpForwards {
		sv.tr.goTracked(func() { sv.serveTCPForward(f) })
	}
	for _, f := range sv.n.udpForwards {
		sv.tr.goTracked(func() { sv.serveUDPForward(f) })
	}
	return nil
}

// tracker owns the goroutines and connections of a session so that teardown
// can close every connection and wait for every goroutine.
type tracker struct {
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed bool
	conns  map[io.Closer]struct{}
}

// enter registers a goroutine; false once the session is shutting down.
func (t *tracker) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) exit() { t.wg.Done() }

// goTracked runs f in a registered goroutine (or not at all after shutdown).
func (t *tracker) goTracked(f func()) bool {
	if !t.enter() {
		return false
	}
	go func() {
		defer t.exit()
		f()
	}()
	return true
}

// add registers c to be closed at shutdown; after shutdown it closes c and
// returns false.
func (t *tracker) add(c io.Closer) bool {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		_ = c.Close()
		return false
	}
	if t.conns == nil {
		t.conns = make(map[io.Closer]struct{})
	}
	t.conns[c] = struct{}{}
	t.mu.Unlock()
	return true
}

func (t *tracker) remove(c io.Closer) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// closeAll stops new registrations and closes every registered connection.
func (t *tracker) closeAll() {
	t.mu.Lock()
	t.closed = true
	conns := t.conns
	t.conns = nil
	t.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
}

// shutdown closes every registered connection and waits for every
// registered goroutine.
func (t *tracker) shutdown() {
	t.closeAll()
	t.wg.Wait()
}

func tcpAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

func netipAddr(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16()).Unmap()
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpAddr(ap.Addr()), Port: ap.Port()}
}

func ptr[T any](v T) *T { return &v }

package usernet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Policy decides which destinations the guest may reach. It is consulted
// after the built-in host-protection rule, which it cannot override, for
// every guest TCP connection and every new UDP flow. It may be called
// concurrently.
type Policy interface {
	// Allow returns nil to let the guest reach dst over proto ("tcp" or
	// "udp"), or an error saying why not. dst is the address the guest
	// asked for (10.0.2.2:P, not the 127.0.0.1:P it maps to).
	Allow(proto string, dst netip.AddrPort) error
}

// QueryPolicy is an optional interface of a Policy that also sees the
// guest's DNS queries at 10.0.2.3: a non-nil error from AllowQuery answers
// the query with REFUSED instead of forwarding it. name is the queried name
// in presentation form with the trailing dot ("example.com.").
type QueryPolicy interface {
	AllowQuery(name string) error
}

// Reasons the host-protection rule gives.
var (
	errHostLoopback = errors.New("the host's loopback is not reachable from the guest (AllowHostLoopback is off)")
	errHostAddress  = errors.New("the host's own addresses are not reachable from the guest (AllowHostLoopback is off)")
	errGateway      = errors.New("the gateway is the host, which is not reachable from the guest (AllowHostLoopback is off)")
	errGuestNetwork = errors.New("nothing in the guest's network serves this destination")
	errNotUnicast   = errors.New("not a unicast destination")
	errTooManyFlows = errors.New("too many connections or flows open for this guest")
)

var ipv4Loopback = netip.MustParseAddr("127.0.0.1")

// hostAddrsTTL is how long the host's interface addresses are cached.
const hostAddrsTTL = 2 * time.Second

// route applies the host-protection rule and the Policy to a guest
// destination and returns the host address to dial for it.
func (n *Network) route(proto string, dst netip.AddrPort) (netip.AddrPort, error) {
	a := dst.Addr().Unmap()
	target := netip.AddrPortFrom(a, dst.Port())
	switch {
	case a == GatewayAddr:
		if !n.cfg.AllowHostLoopback {
			return target, errGateway
		}
		target = netip.AddrPortFrom(ipv4Loopback, dst.Port())
	case Subnet.Contains(a):
		return target, errGuestNetwork
	case !a.IsValid() || a.IsUnspecified() || a.IsMulticast() ||
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) ||
		(a.Is4() && a.As4()[0] == 0):
		return target, errNotUnicast
	case a.IsLoopback():
		if !n.cfg.AllowHostLoopback {
			return target, errHostLoopback
		}
	case n.hostAddr.contains(a):
		if !n.cfg.AllowHostLoopback {
			return target, errHostAddress
		}
	}
	if n.allow != nil {
		if err := n.allow.allow(dst); err != nil {
			return target, err
		}
	}
	if n.cfg.Policy != nil {
		if err := n.cfg.Policy.Allow(proto, dst); err != nil {
			return target, err
		}
	}
	return target, nil
}

// deny counts and logs a refused destination.
func (n *Network) deny(proto string, dst netip.AddrPort, err error) {
	n.stats.denied(Denial{Time: time.Now(), Protocol: proto, Dst: dst, Reason: err.Error()})
	n.log.Debug("usernet: refused guest destination", "proto", proto, "dst", dst.String(), "reason", err.Error())
}

// hostAddrs caches the host's interface addresses (and the broadcast
// addresses of their IPv4 subnets) for a short while: interfaces come and
// go, but listing them on every connection would be slow.
type hostAddrs struct {
	mu      sync.Mutex
	addrs   map[netip.Addr]struct{}
	fetched time.Time
}

func newHostAddrs() *hostAddrs { return &hostAddrs{} }

func (h *hostAddrs) contains(a netip.Addr) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.addrs == nil || time.Since(h.fetched) > hostAddrsTTL {
		addrs, err := interfaceAddrs()
		if err != nil && h.addrs != nil {
			// Keep the last good list rather than opening everything up.
			addrs = h.addrs
		}
		h.addrs, h.fetched = addrs, time.Now()
	}
	_, ok := h.addrs[a]
	return ok
}

func interfaceAddrs() (map[netip.Addr]struct{}, error) {
	list, err := net.InterfaceAddrs()
	if err != nil {
		return map[netip.Addr]struct{}{}, fmt.Errorf("list host interface addresses: %w", err)
	}
	m := make(map[netip.Addr]struct{}, 2*len(list))
	for _, a := range list {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		m[ip] = struct{}{}
		if ip.Is4() {
			ones, bits := ipn.Mask.Size()
			if bits == 32 && ones < 31 {
				b := ip.As4()
				mask := ^uint32(0) >> ones
				v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
				v |= mask
				m[netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})] = struct{}{}
			}
		}
	}
	return m, nil
}

package usernet

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Stats are a Network's counters since New.
type Stats struct {
	// The guest link. Bytes are whole ethernet frames.
	RxFrames, RxBytes uint64 // from the guest
	TxFrames, TxBytes uint64 // to the guest
	RxDropped         uint64 // frames from the guest the stack does not take

	// Outbound: guest TCP connections and UDP flows dialled on the host.
	TCPConns uint64
	UDPFlows uint64
	// Inbound: host connections and UDP clients forwarded into the guest.
	ForwardedConns uint64
	// Open now, both directions (and the guest's DNS-over-TCP connections).
	OpenTCP, OpenUDP int64

	// DNS queries answered at 10.0.2.3, and how many of them got SERVFAIL
	// (no nameserver answered) or were refused by the policy.
	DNSQueries, DNSFailures, DNSRefused uint64

	// Destinations refused by the host-protection rule or the Policy: TCP
	// connections (answered with a reset) and UDP datagrams (dropped).
	DeniedTCP, DeniedUDP uint64
	// RecentDenials are the last few refusals, oldest first.
	RecentDenials []Denial
}

// Denial is one refused destination.
type Denial struct {
	Time     time.Time
	Protocol string // "tcp" or "udp"
	Dst      netip.AddrPort
	Reason   string
}

const recentDenials = 8

type counters struct {
	rxFrames, rxBytes, txFrames, txBytes, rxDropped atomic.Uint64
	tcpConns, udpFlows, forwarded                   atomic.Uint64
	dnsQueries, dnsFailures, dnsRefused             atomic.Uint64
	deniedTCP, deniedUDP                            atomic.Uint64
	openTCP, openUDP                                atomic.Int64 // against maxTCPConns, maxUDPFlows

	mu     sync.Mutex
	recent []Denial // ring of recentDenials
	next   int
}

func (c *counters) rxFrame(n int) {
	c.rxFrames.Add(1)
	c.rxBytes.Add(uint64(n))
}

func (c *counters) txFrame(n int) {
	c.txFrames.Add(1)
	c.txBytes.Add(uint64(n))
}

func (c *counters) denied(d Denial) {
	if d.Protocol == "tcp" {
		c.deniedTCP.Add(1)
	} else {
		c.deniedUDP.Add(1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.recent) < recentDenials {
		c.recent = append(c.recent, d)
		return
	}
	c.recent[c.next] = d
	c.next = (c.next + 1) % recentDenials
}

// Stats returns a snapshot of the counters. It is safe to call at any time,
// also during and after Serve.
func (n *Network) Stats() Stats {
	c := &n.stats
	st := Stats{
		RxFrames: c.rxFrames.Load(), RxBytes: c.rxBytes.Load(),
		TxFrames: c.txFrames.Load(), TxBytes: c.txBytes.Load(),
		RxDropped:      c.rxDropped.Load(),
		TCPConns:       c.tcpConns.Load(),
		UDPFlows:       c.udpFlows.Load(),
		ForwardedConns: c.forwarded.Load(),
		OpenTCP:        c.openTCP.Load(),
		OpenUDP:        c.openUDP.Load(),
		DNSQueries:     c.dnsQueries.Load(),
		DNSFailures:    c.dnsFailures.Load(),
		DNSRefused:     c.dnsRefused.Load(),
		DeniedTCP:      c.deniedTCP.Load(),
		DeniedUDP:      c.deniedUDP.Load(),
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st.RecentDenials = append(st.RecentDenials, c.recent[c.next:]...)
	st.RecentDenials = append(st.RecentDenials, c.recent[:c.next]...)
	return st
}

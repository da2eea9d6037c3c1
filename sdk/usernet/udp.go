package usernet

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// handleUDP takes the first datagram of a guest flow (guest address and
// port, destination address and port) that no endpoint of the stack owns.
// It runs on the link's read loop, so it must not block: a host UDP socket
// is made without a round trip and the flow's copying runs in goroutines.
func (sv *session) handleUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	dst := netip.AddrPortFrom(netipAddr(id.LocalAddress), id.LocalPort)
	target, err := sv.n.route("udp", dst)
	if err != nil {
		sv.n.deny("udp", dst, err)
		return
	}
	if sv.n.stats.openUDP.Add(1) > maxUDPFlows {
		sv.n.stats.openUDP.Add(-1)
		sv.n.deny("udp", dst, errTooManyFlows)
		return
	}
	hc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
	if err != nil {
		sv.n.stats.openUDP.Add(-1)
		sv.n.log.Debug("usernet: host UDP socket failed", "dst", dst.String(), "err", err)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq) // takes this first datagram too
	if terr != nil {
		sv.n.stats.openUDP.Add(-1)
		_ = hc.Close()
		sv.n.log.Debug("usernet: guest UDP endpoint failed", "dst", dst.String(), "err", terr.String())
		return
	}
	gc := gonet.NewUDPConn(&wq, ep)
	sv.n.stats.udpFlows.Add(1)
	if !sv.tr.goTracked(func() {
		defer sv.n.stats.openUDP.Add(-1)
		sv.relayUDP(gc, hc)
	}) {
		sv.n.stats.openUDP.Add(-1)
		_ = gc.Close()
		_ = hc.Close()
	}
}

// relayUDP copies datagrams between two connected UDP sockets until neither
// has carried one for the idle timeout, or the session ends.
func (sv *session) relayUDP(a, b net.Conn) {
	if !sv.tr.add(a) {
		_ = b.Close()
		return
	}
	if !sv.tr.add(b) {
		sv.tr.remove(a)
		_ = a.Close()
		return
	}
	defer func() {
		sv.tr.remove(a)
		sv.tr.remove(b)
		_ = a.Close()
		_ = b.Close()
	}()
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyDatagrams(b, a, &last, sv.n.udpIdle)
		_ = b.Close() // wake the other direction
	}()
	copyDatagrams(a, b, &last, sv.n.udpIdle)
	_ = a.Close()
	<-done
}

// copyDatagrams copies src to dst until src fails or the flow (both
// directions, through last) has been idle for idle.
func copyDatagrams(dst, src net.Conn, last *atomic.Int64, idle time.Duration) {
	buf := make([]byte, 65535)
	for {
		_ = src.SetReadDeadline(time.Now().Add(idle))
		n, err := src.Read(buf)
		if err != nil {
			if isTimeout(err) && time.Since(time.Unix(0, last.Load())) < idle {
				continue
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // an ICMP error for an earlier datagram; the flow goes on
			}
			return
		}
		last.Store(time.Now().UnixNano())
		if _, err := dst.Write(buf[:n]); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

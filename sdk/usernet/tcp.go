package usernet

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// handleTCP takes a guest's SYN to any destination not served by the stack
// itself: check it, dial it on the host, and only then complete the
// guest's handshake, so that a refused or unreachable destination looks
// like one to the guest (a reset) rather than an accepted connection that
// drops at once.
func (sv *session) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	dst := netip.AddrPortFrom(netipAddr(id.LocalAddress), id.LocalPort)
	target, err := sv.n.route("tcp", dst)
	if err != nil {
		sv.n.deny("tcp", dst, err)
		r.Complete(true)
		return
	}
	if !sv.tr.enter() {
		r.Complete(true)
		return
	}
	defer sv.tr.exit()
	if sv.n.stats.openTCP.Add(1) > maxTCPConns {
		sv.n.stats.openTCP.Add(-1)
		sv.n.deny("tcp", dst, errTooManyFlows)
		r.Complete(true)
		return
	}
	defer sv.n.stats.openTCP.Add(-1)

	ctx, cancel := context.WithTimeout(sv.ctx, dialTimeout)
	d := net.Dialer{}
	hc, err := d.DialContext(ctx, "tcp", target.String())
	cancel()
	if err != nil {
		sv.n.log.Debug("usernet: host dial failed", "dst", dst.String(), "target", target.String(), "err", err)
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		// The guest gave up (or reset) while we dialled.
		_ = hc.Close()
		r.Complete(true)
		return
	}
	r.Complete(false)
	sv.n.stats.tcpConns.Add(1)
	gc := gonet.NewTCPConn(&wq, ep)
	sv.proxy(gc, hc.(*net.TCPConn))
}

// halfCloser is a connection whose write side can be shut on its own.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// proxy copies a and b both ways until both directions end. An EOF on one
// side is passed on as a half-close, so a peer that shuts its write side
// still gets its answer; an error on either side closes both.
func (sv *session) proxy(a, b halfCloser) {
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
	done := make(chan struct{})
	cp := func(dst, src halfCloser) {
		if _, err := io.Copy(dst, src); err != nil && !errors.Is(err, io.EOF) {
			_ = a.Close()
			_ = b.Close()
			return
		}
		_ = dst.CloseWrite()
	}
	go func() {
		defer close(done)
		cp(b, a)
	}()
	cp(a, b)
	<-done
}

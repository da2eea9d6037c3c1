package usernet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

type tcpForward struct {
	pf   PortForward
	name string // "tcp 127.0.0.1:8080", for messages
	l    net.Listener
}

type udpForward struct {
	pf   PortForward
	name string
	c    net.PacketConn
}

// bindPorts validates the port forwards and binds their host sockets.
func (n *Network) bindPorts(ports []PortForward) error {
	type bind struct {
		proto, addr, name string
		pf                PortForward
	}
	var binds []bind
	seen := make(map[string]bool)
	for _, p := range ports {
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		if proto != "tcp" && proto != "udp" {
			return fmt.Errorf("usernet: port forward %d:%d has protocol %q: use tcp or udp", p.HostPort, p.GuestPort, p.Protocol)
		}
		if p.HostPort == 0 || p.GuestPort == 0 {
			return fmt.Errorf("usernet: port forward %d:%d/%s: ports are numbers from 1 to 65535", p.HostPort, p.GuestPort, proto)
		}
		host, shown := "", "*"
		if p.HostIP != "" {
			a, err := netip.ParseAddr(p.HostIP)
			if err != nil {
				return fmt.Errorf("usernet: port forward %s:%d:%d/%s: %q is not an IP address", p.HostIP, p.HostPort, p.GuestPort, proto, p.HostIP)
			}
			host = a.Unmap().String()
			shown = host
		}
		port := strconv.Itoa(int(p.HostPort))
		b := bind{proto: proto, addr: net.JoinHostPort(host, port), name: proto + " " + net.JoinHostPort(shown, port), pf: p}
		b.pf.Protocol = proto
		if seen[b.name] {
			return fmt.Errorf("usernet: host port %d is forwarded twice (%s): give each -p its own host port", p.HostPort, b.name)
		}
		seen[b.name] = true
		binds = append(binds, b)
	}
	for _, b := range binds {
		var err error
		if b.proto == "tcp" {
			var l net.Listener
			if l, err = net.Listen("tcp", b.addr); err == nil {
				n.tcpForwards = append(n.tcpForwards, &tcpForward{pf: b.pf, name: b.name, l: l})
			}
		} else {
			var c net.PacketConn
			if c, err = net.ListenPacket("udp", b.addr); err == nil {
				n.udpForwards = append(n.udpForwards, &udpForward{pf: b.pf, name: b.name, c: c})
			}
		}
		if err != nil {
			return bindError(b.pf.HostPort, b.name, err)
		}
	}
	return nil
}

func bindError(port uint16, name string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("usernet: host port %d is already in use (%s): choose another -p port: %w", port, name, ErrPortInUse)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("usernet: cannot bind host port %d (%s): permission denied; ports below 1024 need privileges, choose a higher -p port", port, name)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("usernet: cannot bind host port %d (%s): the address is not one of this host's; use an address of a host interface, or none", port, name)
	default:
		return fmt.Errorf("usernet: cannot bind host port %d (%s): %w", port, name, err)
	}
}

// closeListeners closes the port-forward sockets; safe to repeat.
func (n *Network) closeListeners() {
	n.listenersOnce.Do(func() {
		for _, f := range n.tcpForwards {
			_ = f.l.Close()
		}
		for _, f := range n.udpForwards {
			_ = f.c.Close()
		}
	})
}

// serveTCPForward accepts host connections on a forwarded port and dials
// each into the guest.
func (sv *session) serveTCPForward(f *tcpForward) {
	for {
		c, err := f.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || sv.ctx.Err() != nil {
				return
			}
			// Out of file descriptors and the like: wait, do not spin.
			sv.n.log.Debug("usernet: accept on forwarded port", "port", f.name, "err", err)
			select {
			case <-time.After(50 * time.Millisecond):
				continue
			case <-sv.ctx.Done():
				return
			}
		}
		if !sv.tr.goTracked(func() { sv.forwardTCP(f, c.(*net.TCPConn)) }) {
			_ = c.Close()
			return
		}
	}
}

func (sv *session) forwardTCP(f *tcpForward, c *net.TCPConn) {
	if sv.n.stats.openTCP.Add(1) > maxTCPConns {
		sv.n.stats.openTCP.Add(-1)
		_ = c.Close()
		return
	}
	defer sv.n.stats.openTCP.Add(-1)
	ctx, cancel := context.WithTimeout(sv.ctx, guestDialTimeout)
	gc, err := gonet.DialTCPWithBind(ctx, sv.s,
		fullAddr(netip.AddrPortFrom(GatewayAddr, 0)),
		fullAddr(netip.AddrPortFrom(GuestAddr, f.pf.GuestPort)), ipv4.ProtocolNumber)
	cancel()
	if err != nil {
		sv.n.log.Debug("usernet: forwarded connection not accepted by the guest", "port", f.name, "guest_port", f.pf.GuestPort, "err", err)
		_ = c.Close()
		return
	}
	sv.n.stats.forwarded.Add(1)
	sv.proxy(gc, c)
}

// serveUDPForward relays datagrams between host clients of a forwarded port
// and the guest: each client address gets its own flow (a guest socket from
// the gateway's address), which ends after the idle timeout.
func (sv *session) serveUDPForward(f *udpForward) {
	var mu sync.Mutex
	flows := make(map[string]*udpFlow)
	buf := make([]byte, 65535)
	for {
		n, from, err := f.c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || sv.ctx.Err() != nil {
				return
			}
			continue // e.g. ECONNREFUSED from an earlier reply's ICMP error
		}
		key := from.String()
		mu.Lock()
		fl := flows[key]
		mu.Unlock()
		if fl == nil {
			if sv.n.stats.openUDP.Add(1) > maxUDPFlows {
				sv.n.stats.openUDP.Add(-1)
				continue
			}
			gc, err := gonet.DialUDP(sv.s,
				ptr(fullAddr(netip.AddrPortFrom(GatewayAddr, 0))),
				ptr(fullAddr(netip.AddrPortFrom(GuestAddr, f.pf.GuestPort))), ipv4.ProtocolNumber)
			if err != nil {
				sv.n.stats.openUDP.Add(-1)
				sv.n.log.Debug("usernet: guest socket for a forwarded UDP client", "port", f.name, "err", err)
				continue
			}
			fl = &udpFlow{guest: gc}
			fl.last.Store(time.Now().UnixNano())
			if !sv.tr.add(gc) {
				sv.n.stats.openUDP.Add(-1)
				return
			}
			mu.Lock()
			flows[key] = fl
			mu.Unlock()
			sv.n.stats.forwarded.Add(1)
			if !sv.tr.goTracked(func() {
				defer func() {
					mu.Lock()
					delete(flows, key)
					mu.Unlock()
					sv.tr.remove(gc)
					_ = gc.Close()
					sv.n.stats.openUDP.Add(-1)
				}()
				fl.toClient(f.c, from, sv.n.udpIdle)
			}) {
				sv.n.stats.openUDP.Add(-1)
				return
			}
		}
		fl.last.Store(time.Now().UnixNano())
		_, _ = fl.guest.Write(buf[:n])
	}
}

type udpFlow struct {
	guest *gonet.UDPConn
	last  atomic.Int64 // unix nanoseconds of the last datagram either way
}

// toClient copies the guest's replies to the client until the flow is idle.
func (fl *udpFlow) toClient(c net.PacketConn, client net.Addr, idle time.Duration) {
	buf := make([]byte, 65535)
	for {
		_ = fl.guest.SetReadDeadline(time.Now().Add(idle))
		n, err := fl.guest.Read(buf)
		if err != nil {
			if isTimeout(err) && time.Since(time.Unix(0, fl.last.Load())) < idle {
				continue
			}
			return
		}
		fl.last.Store(time.Now().UnixNano())
		if _, err := c.WriteTo(buf[:n], client); errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

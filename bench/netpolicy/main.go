// Command netpolicy measures what the egress allow-list (--allow-net)
// costs a box's connection setup: TCP connects from a guest through
// sdk/usernet to a host server, with no allow-list, with a one-rule list
// and with a 64-rule list whose matching rule comes last, runs interleaved.
//
// The guest is a gVisor stack in this process speaking the VMM wire format
// over a socketpair, not a VM: under TCG a guest's own connect costs
// milliseconds of emulated kernel time, which would hide a check that takes
// well under a microsecond. Everything from the guest's SYN on is the real
// path: the framing, usernet's stack, the policy check, the host dial and
// accept, the handshake back to the guest. The server is on the host's
// loopback, reached through the gateway (AllowHostLoopback), and closes
// each connection at once; one sample is connect + the EOF.
//
//	go run ./bench/netpolicy [-n 2000]
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
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

	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/sdk/usernet"
)

func main() {
	n := flag.Int("n", 2000, "connections per variant")
	flag.Parse()
	if err := run(*n); err != nil {
		fmt.Fprintln(os.Stderr, "netpolicy:", err)
		os.Exit(1)
	}
}

type variant struct {
	name    string
	allow   []usernet.AllowRule
	g       *guest
	n       *usernet.Network
	samples []time.Duration
}

func run(count int) error {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
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
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	dst := netip.AddrPortFrom(usernet.GatewayAddr, port)
	match := usernet.AllowRule{Prefix: netip.PrefixFrom(usernet.GatewayAddr, 32), Port: port}
	var many []usernet.AllowRule
	for i := range 63 {
		many = append(many, usernet.AllowRule{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, byte(i), 0}), 24), Port: 443})
	}
	many = append(many, match)
	vs := []*variant{
		{name: "no allow-list"},
		{name: "allow-list, 1 rule"},
		{name: "allow-list, 64 rules (match last)"},
	}
	vs[1].allow = []usernet.AllowRule{match}
	vs[2].allow = many
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, v := range vs {
		v.n, err = usernet.New(usernet.Config{AllowHostLoopback: true, Allow: v.allow})
		if err != nil {
			return err
		}
		defer v.n.Close()
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		vmEnd, hostEnd := fileConn(fds[0]), fileConn(fds[1])
		go func() { _ = v.n.Serve(ctx, hostEnd) }()
		v.g = newGuest(vmEnd)
		defer v.g.close()
	}
	// Warm up (ARP, first dials), then interleave the variants.
	for _, v := range vs {
		for range 50 {
			if _, err := v.g.connect(dst); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
		}
	}
	for range count {
		for _, v := range vs {
			d, err := v.g.connect(dst)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			v.samples = append(v.samples, d)
		}
	}
	fmt.Printf("TCP connection setup through sdk/usernet, guest stack in-process, %d connections each, interleaved\n", count)
	fmt.Printf("%-36s %10s %10s %10s\n", "", "min", "p50", "p99")
	base := stat.Median(vs[0].samples)
	for _, v := range vs {
		s := slices.Clone(v.samples)
		slices.Sort(s)
		p99 := s[len(s)*99/100]
		fmt.Printf("%-36s %10s %10s %10s   p50 %.2fx\n", v.name, stat.Min(s).Round(time.Microsecond), stat.Median(s).Round(time.Microsecond), p99.Round(time.Microsecond),
			float64(stat.Median(s))/float64(base))
	}
	for _, v := range vs {
		if st := v.n.Stats(); st.DeniedTCP != 0 {
			return fmt.Errorf("%s: %d connections refused, want none", v.name, st.DeniedTCP)
		}
	}
	return nil
}

func fileConn(fd int) net.Conn {
	f := os.NewFile(uintptr(fd), "link")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		panic(err) // a fresh socketpair end always converts
	}
	return c
}

// guest is the VM side of the link: a gVisor stack at 10.0.2.15/24 via
// 10.0.2.2, framing each ethernet frame with its 4-byte length.
type guest struct {
	s      *stack.Stack
	ch     *channel.Endpoint
	conn   net.Conn
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newGuest(conn net.Conn) *guest {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	ch := channel.New(4096, usernet.MTU+header.EthernetMinimumSize, tcpip.LinkAddress("\x52\x54\x00\x12\x34\x56"))
	if err := s.CreateNIC(1, ethernet.New(ch)); err != nil {
		panic(err.String())
	}
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(usernet.GuestAddr.As4()), PrefixLen: 24},
	}, stack.AddressProperties{}); err != nil {
		panic(err.String())
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(usernet.GatewayAddr.As4()), NIC: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	g := &guest{s: s, ch: ch, conn: conn, cancel: cancel}
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
			out = binary.BigEndian.AppendUint32(out[:0], uint32(len(frame)))
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
			var l [4]byte
			if _, err := io.ReadFull(conn, l[:]); err != nil {
				return
			}
			n := int(binary.BigEndian.Uint32(l[:]))
			if _, err := io.ReadFull(conn, buf[:n]); err != nil {
				return
			}
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(buf[:n])})
			ch.InjectInbound(0, pkt)
			pkt.DecRef()
		}
	}()
	return g
}

// connect dials dst and waits for the server's close: one connection setup.
func (g *guest) connect(dst netip.AddrPort) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	c, err := gonet.DialContextTCP(ctx, g.s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(dst.Addr().As4()), Port: dst.Port()}, ipv4.ProtocolNumber)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		return 0, fmt.Errorf("read: %v, want EOF", err)
	}
	return time.Since(start), nil
}

func (g *guest) close() {
	g.cancel()
	_ = g.conn.Close()
	g.wg.Wait()
	g.s.Close()
	g.s.Wait()
	g.ch.Close()
}

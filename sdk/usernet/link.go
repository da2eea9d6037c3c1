package usernet

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// maxFrame bounds a frame on the wire. QEMU's largest is 69632 bytes
// (NET_BUFSIZE); a length beyond that means the stream is broken or hostile,
// and reading it would only let the peer make us allocate.
const maxFrame = 69632

// linkEndpoint carries raw ethernet frames between the stack and the guest
// socket. It sits under gVisor's ethernet endpoint, which adds and parses
// the ethernet header.
type linkEndpoint struct {
	conn  net.Conn
	dgram bool
	stats *counters

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	mac        tcpip.LinkAddress

	wmu  sync.Mutex // one writer at a time keeps frames whole on a stream
	wbuf []byte

	failOnce sync.Once
	failed   chan struct{} // closed on the first failed write
	failErr  error
}

var _ stack.LinkEndpoint = (*linkEndpoint)(nil)

func newLink(conn net.Conn, stats *counters) *linkEndpoint {
	dgram := false
	if a := conn.LocalAddr(); a != nil && a.Network() == "unixgram" {
		dgram = true
	}
	return &linkEndpoint{conn: conn, dgram: dgram, stats: stats, mac: gatewayMAC, failed: make(chan struct{})}
}

// fail records that the link cannot be written any more. On a datagram
// socket this is how the peer's exit shows (a read just blocks); on a
// stream it usually comes with the read side's EOF.
func (e *linkEndpoint) fail(err error) {
	e.failOnce.Do(func() {
		e.failErr = err
		close(e.failed)
	})
}

// MTU is the frame MTU; the ethernet endpoint above subtracts its header.
func (e *linkEndpoint) MTU() uint32           { return MTU + header.EthernetMinimumSize }
func (e *linkEndpoint) SetMTU(uint32)         {}
func (*linkEndpoint) MaxHeaderLength() uint16 { return 0 }

func (e *linkEndpoint) LinkAddress() tcpip.LinkAddress {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.mac
}

func (e *linkEndpoint) SetLinkAddress(a tcpip.LinkAddress) {
	e.mu.Lock()
	e.mac = a
	e.mu.Unlock()
}

func (*linkEndpoint) Capabilities() stack.LinkEndpointCapabilities { return 0 }

func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	e.dispatcher = d
	e.mu.Unlock()
}

func (e *linkEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait: the only worker is readLoop, which Serve owns and waits for.
func (*linkEndpoint) Wait()                                   {}
func (*linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (*linkEndpoint) AddHeader(*stack.PacketBuffer)           {}
func (*linkEndpoint) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (*linkEndpoint) Close()                                  {}
func (*linkEndpoint) SetOnCloseAction(func())                 {}

// WritePackets sends frames to the guest. On a stream all frames of the
// batch go out in one write.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	list := pkts.AsSlice()
	if e.dgram {
		for i, pkt := range list {
			e.wbuf = appendPacket(e.wbuf[:0], pkt)
			if _, err := e.conn.Write(e.wbuf); err != nil {
				e.fail(err)
				return e.written(i)
			}
			e.stats.txFrame(len(e.wbuf))
		}
		return len(list), nil
	}
	b := e.wbuf[:0]
	for _, pkt := range list {
		b = binary.BigEndian.AppendUint32(b, uint32(pkt.Size()))
		b = appendPacket(b, pkt)
	}
	e.wbuf = b
	if _, err := e.conn.Write(b); err != nil {
		e.fail(err)
		return e.written(0)
	}
	for _, pkt := range list {
		e.stats.txFrame(pkt.Size())
	}
	return len(list), nil
}

func (e *linkEndpoint) written(n int) (int, tcpip.Error) {
	if n == 0 {
		return 0, &tcpip.ErrClosedForSend{}
	}
	return n, nil
}

func appendPacket(b []byte, pkt *stack.PacketBuffer) []byte {
	for _, s := range pkt.AsSlices() {
		b = append(b, s...)
	}
	return b
}

// readLoop delivers the guest's frames to the stack until the socket ends.
func (e *linkEndpoint) readLoop() error {
	buf := make([]byte, maxFrame)
	var r *bufio.Reader
	if !e.dgram {
		r = bufio.NewReaderSize(e.conn, 256<<10)
	}
	var hdr [4]byte
	for {
		var frame []byte
		if e.dgram {
			n, err := e.conn.Read(buf)
			if err != nil {
				return err
			}
			frame = buf[:n]
		} else {
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				return err
			}
			n := binary.BigEndian.Uint32(hdr[:])
			if n > maxFrame {
				return fmt.Errorf("frame of %d bytes is longer than the %d a link carries: the stream is not length-prefixed ethernet", n, maxFrame)
			}
			if _, err := io.ReadFull(r, buf[:n]); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
			frame = buf[:n]
		}
		e.stats.rxFrame(len(frame))
		if !acceptFrame(frame) {
			e.stats.rxDropped.Add(1)
			continue
		}
		e.mu.RLock()
		d := e.dispatcher
		e.mu.RUnlock()
		if d == nil {
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		d.DeliverNetworkPacket(0, pkt) // the ethernet endpoint reads the type
		pkt.DecRef()
	}
}

// acceptFrame filters what the promiscuous stack would otherwise answer for
// every address: ARP requests are answered only for the gateway and DNS
// addresses (as on a real LAN, other 10.0.2.x addresses stay unresolved),
// and ICMP echo only for them too, since a reply from the stack for any
// other destination would fake a reachability the host never checked.
func acceptFrame(f []byte) bool {
	if len(f) < header.EthernetMinimumSize {
		return false
	}
	eth := header.Ethernet(f)
	payload := f[header.EthernetMinimumSize:]
	switch eth.Type() {
	case header.ARPProtocolNumber:
		a := header.ARP(payload)
		if !a.IsValid() {
			return false
		}
		if a.Op() == header.ARPRequest {
			return servedAddr(a.ProtocolAddressTarget())
		}
		return true
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(payload)
		if !ip.IsValid(len(payload)) {
			return false
		}
		if ip.TransportProtocol() == header.ICMPv4ProtocolNumber {
			return servedAddr(ip.DestinationAddressSlice())
		}
		return true
	default:
		return false // IPv6 and the rest: the guest network is IPv4 only
	}
}

func servedAddr(a []byte) bool {
	if len(a) != 4 {
		return false
	}
	ip := [4]byte(a)
	return ip == GatewayAddr.As4() || ip == DNSAddr.As4()
}

package usernet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The benchmarks run the whole path a box's traffic takes, minus the VM:
// a guest gVisor stack, the socketpair with the wire framing, this
// package's stack and forwarders, and real host sockets on the loopback
// (reached through the gateway with AllowHostLoopback).

// BenchmarkTCPConnect: guest connect to a host server, which closes at once;
// the guest reads EOF. One iteration = SYN through the stack, host dial and
// accept, handshake completion, FIN back to the guest.
func BenchmarkTCPConnect(b *testing.B) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
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
	sv := serve(b, Config{AllowHostLoopback: true}, unix.SOCK_STREAM)
	dst := netip.AddrPortFrom(GatewayAddr, uint16(l.Addr().(*net.TCPAddr).Port))
	ctx := context.Background()
	buf := make([]byte, 1)
	b.ResetTimer()
	for b.Loop() {
		c, err := sv.guest.dialTCP(ctx, dst)
		if err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(buf); err != io.EOF {
			b.Fatalf("read: %v, want EOF", err)
		}
		c.Close()
	}
}

const benchChunk = 64 << 10

// BenchmarkTCPThroughput: bulk data guest → host (outbound NAT) and host →
// guest (a port forward), over stream and datagram links.
func BenchmarkTCPThroughput(b *testing.B) {
	for _, link := range []struct {
		name string
		typ  int
	}{{"stream", unix.SOCK_STREAM}, {"dgram", unix.SOCK_DGRAM}} {
		b.Run("guest-to-host/"+link.name, func(b *testing.B) { benchGuestToHost(b, link.typ) })
		b.Run("host-to-guest/"+link.name, func(b *testing.B) { benchHostToGuest(b, link.typ) })
	}
}

func benchGuestToHost(b *testing.B, typ int) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	sv := serve(b, Config{AllowHostLoopback: true}, typ)
	c, err := sv.guest.dialTCP(context.Background(), netip.AddrPortFrom(GatewayAddr, uint16(l.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	var sent int64
	for b.Loop() {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
		sent += benchChunk
	}
	if err := c.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	select {
	case n := <-got:
		if n != sent {
			b.Fatalf("host received %d bytes, guest sent %d", n, sent)
		}
	case <-time.After(60 * time.Second):
		b.Fatal("host did not receive everything")
	}
}

func benchHostToGuest(b *testing.B, typ int) {
	port := freePort(b, "tcp")
	sv := serve(b, Config{Ports: []PortForward{{HostIP: "127.0.0.1", HostPort: port, GuestPort: 80}}}, typ)
	gl, err := sv.guest.listenTCP(80)
	if err != nil {
		b.Fatal(err)
	}
	defer gl.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := gl.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	var sent int64
	for b.Loop() {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
		sent += benchChunk
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		b.Fatal(err)
	}
	select {
	case n := <-got:
		if n != sent {
			b.Fatalf("guest received %d bytes, host sent %d", n, sent)
		}
	case <-time.After(60 * time.Second):
		b.Fatal("guest did not receive everything")
	}
}

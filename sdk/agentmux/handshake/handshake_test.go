package handshake

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func socketpair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns[0], conns[1]
}

// TestHandshakeSkipsStaleBytes: the guest comes up late (after several HELLO resends) and
// stale garbage sits in both directions; afterwards the first byte each side reads is the
// other side's first payload byte.
func TestHandshakeSkipsStaleBytes(t *testing.T) {
	host, guest := socketpair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Stale bytes from an earlier session, in both directions.
	io.WriteString(host, "\x00\x01yamux-frame-remains BOXCTL-READY deadbeef\n")
	io.WriteString(guest, "garbage without newline BOXCTL-HELLO stale-nonce\nmore garbage")

	hostErr := make(chan error, 1)
	go func() { hostErr <- Host(ctx, host, 20*time.Millisecond) }()
	time.Sleep(150 * time.Millisecond) // several resends pile up
	if _, err := io.WriteString(guest, AgentUp); err != nil {
		t.Fatal(err)
	}
	if err := Guest(ctx, guest); err != nil {
		t.Fatalf("guest: %v", err)
	}
	if err := <-hostErr; err != nil {
		t.Fatalf("host: %v", err)
	}

	io.WriteString(host, "H")
	io.WriteString(guest, "G")
	b := make([]byte, 1)
	if _, err := io.ReadFull(guest, b); err != nil || b[0] != 'H' {
		t.Errorf("guest read %q, %v; want the host's payload", b, err)
	}
	if _, err := io.ReadFull(host, b); err != nil || b[0] != 'G' {
		t.Errorf("host read %q, %v; want the guest's payload", b, err)
	}
}

func TestHandshakeClosedAndCancelled(t *testing.T) {
	host, guest := socketpair(t)
	guest.Close()
	if err := Host(context.Background(), host, time.Second); err == nil {
		t.Error("host handshake succeeded on a closed pipe")
	}

	host, guest = socketpair(t)
	_ = host
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := Guest(ctx, guest); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("guest handshake without a host: %v", err)
	}
}

// TestHostAnswersAgentUpAtOnce: a guest restored from a saved state eats
// the first hello in its previous session, then reopens the port and
// announces itself; the host sends the hello again at once, not at its next
// resend (an hour away here: the test fails by its deadline without it).
func TestHostAnswersAgentUpAtOnce(t *testing.T) {
	host, guest := socketpair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hostErr := make(chan error, 1)
	go func() { hostErr <- Host(ctx, host, time.Hour) }()
	// The previous session swallows the first hello.
	lost := make([]byte, len("\n"+helloPrefix)+16+1)
	if _, err := io.ReadFull(guest, lost); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(guest, AgentUp); err != nil {
		t.Fatal(err)
	}
	if err := Guest(ctx, guest); err != nil {
		t.Fatalf("guest: %v", err)
	}
	if err := <-hostErr; err != nil {
		t.Fatalf("host: %v", err)
	}
}

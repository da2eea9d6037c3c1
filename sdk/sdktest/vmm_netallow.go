package sdktest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// GuestDialer makes one TCP connection from inside the guest behind socket
// (a plan's AgentSocket) to addr ("IP:PORT" as the guest names it) and
// returns the first line the server sent, or an error when the connection
// was refused or failed. A dialer that runs `nc` through the guest agent's
// Exec is one; the suite's disks must then hold such a tool.
type GuestDialer func(ctx context.Context, socket, addr string) (string, error)

// WithGuestDialer lets the network-allow check connect from the guest,
// with d: a VMM that declares the capability must then let the guest reach
// a destination on its allow-list and refuse one off it (the suite boots a
// VM of its own for that). Without it the check tests only what Plan does
// with allow-lists. It implies WithGuest(nil) unless WithGuest is given.
func WithGuestDialer(d GuestDialer) VMMOption {
	return func(s *vmmSuite) { s.dial = d }
}

// checkNetworkAllow is the network-allow capability's check: Plan takes a
// valid allow-list on the user-mode network, refuses one without a network
// and one with a rule that does not validate (ErrInvalidArgument); and with
// a GuestDialer, a VM allowed one port of the host (the gateway with
// AllowHostLoopback) reaches it, while another port of the same host is
// refused and its server never sees a connection.
func checkNetworkAllow(e *vmmEnv) {
	t := e.t
	valid := e.spec
	valid.Network = sdk.NetworkSpec{Mode: sdk.NetworkUser, Allow: []sdk.NetworkAllow{
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Port: 443}, {Host: "example.com"},
	}}
	if _, err := e.vmm.Plan(e.ctx, valid); err != nil {
		t.Errorf("Plan with a valid allow-list on the user-mode network: %v", err)
	}
	for _, bad := range []struct {
		name string
		net  sdk.NetworkSpec
	}{
		{"WithoutNetwork", sdk.NetworkSpec{Mode: sdk.NetworkNone, Allow: valid.Network.Allow}},
		{"BadHostName", sdk.NetworkSpec{Mode: sdk.NetworkUser, Allow: []sdk.NetworkAllow{{Host: "not a name"}}}},
		{"EmptyRule", sdk.NetworkSpec{Mode: sdk.NetworkUser, Allow: []sdk.NetworkAllow{{}}}},
	} {
		spec := e.spec
		spec.Network = bad.net
		if _, err := e.vmm.Plan(e.ctx, spec); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Errorf("Plan with allow-list %s (%+v): %v; want ErrInvalidArgument (a list that cannot be applied as given must not start a VM)", bad.name, bad.net, err)
		}
	}
	if e.s.dial == nil {
		t.Log("no GuestDialer (WithGuestDialer): the guest's connections are not checked")
		return
	}

	allowed, allowedPort := hostServer(e, "allowed")
	other, otherPort := hostServer(e, "other")
	gw := guestboot.GatewayAddr.String()
	e.spec.Network = sdk.NetworkSpec{Mode: sdk.NetworkUser, AllowHostLoopback: true, Allow: []sdk.NetworkAllow{
		{Prefix: netip.PrefixFrom(guestboot.GatewayAddr, 32), Port: allowedPort},
	}}
	e.spec.KernelArgs = bootArgs(e.spec)
	e.launch()
	ctx, cancel := context.WithTimeout(e.ctx, e.s.bootTimeout)
	defer cancel()
	if err := waitGuest(ctx, e.s.wait, e.plan.AgentSocket, e.vm); err != nil {
		t.Fatalf("the guest agent: %v", err)
	}
	// The control first: without it the refusal below proves nothing.
	got, err := e.s.dial(ctx, e.plan.AgentSocket, fmt.Sprintf("%s:%d", gw, allowedPort))
	if err != nil || strings.TrimSpace(got) != "allowed" {
		t.Fatalf("the guest's connection to %s:%d, on its allow-list: %q, %v; want the server's %q", gw, allowedPort, got, err, "allowed")
	}
	got, err = e.s.dial(ctx, e.plan.AgentSocket, fmt.Sprintf("%s:%d", gw, otherPort))
	if err == nil && strings.TrimSpace(got) != "" {
		t.Errorf("the guest's connection to %s:%d, off its allow-list, was answered: %q", gw, otherPort, got)
	}
	t.Logf("off the allow-list: %q, %v", got, err)
	if n := other.Load(); n != 0 {
		t.Errorf("the server off the allow-list saw %d connections from the guest", n)
	}
	if n := allowed.Load(); n != 1 {
		t.Errorf("the server on the allow-list saw %d connections, want 1", n)
	}
}

// hostServer listens on the host's loopback and answers each connection
// with greeting, counting them; it stops when the check ends.
func hostServer(e *vmmEnv, greeting string) (*atomic.Int64, uint16) {
	e.t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintln(c, greeting)
			c.Close()
		}
	}()
	e.t.Cleanup(func() { l.Close(); wg.Wait() })
	return &n, uint16(l.Addr().(*net.TCPAddr).Port)
}

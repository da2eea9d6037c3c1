package agent

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRouteMessageLayout(t *testing.T) {
	msg := routeMessage(netip.MustParseAddr("10.0.2.2"), 2, 7)
	if got := binary.NativeEndian.Uint32(msg[0:]); int(got) != len(msg) || len(msg) != 16+12+8+8 {
		t.Fatalf("length field %d, message %d bytes", got, len(msg))
	}
	if binary.NativeEndian.Uint16(msg[4:]) != unix.RTM_NEWROUTE || binary.NativeEndian.Uint32(msg[8:]) != 7 {
		t.Fatal("bad header")
	}
	body := msg[16:]
	if body[0] != unix.AF_INET || body[1] != 0 || body[4] != unix.RT_TABLE_MAIN {
		t.Fatalf("bad rtmsg %v", body[:12])
	}
	gw := body[12:20]
	if binary.NativeEndian.Uint16(gw[2:]) != unix.RTA_GATEWAY || [4]byte(gw[4:8]) != [4]byte{10, 0, 2, 2} {
		t.Fatalf("bad gateway attribute %v", gw)
	}
	oif := body[20:28]
	if binary.NativeEndian.Uint16(oif[2:]) != unix.RTA_OIF || binary.NativeEndian.Uint32(oif[4:]) != 2 {
		t.Fatalf("bad oif attribute %v", oif)
	}
}

func TestNetlinkAck(t *testing.T) {
	ack := func(code int32) []byte {
		b := make([]byte, 36)
		binary.NativeEndian.PutUint16(b[4:], unix.NLMSG_ERROR)
		binary.NativeEndian.PutUint32(b[16:], uint32(code))
		return b
	}
	if err := netlinkAck(ack(0)); err != nil {
		t.Fatal(err)
	}
	if err := netlinkAck(ack(-int32(unix.EEXIST))); err != unix.EEXIST {
		t.Fatalf("got %v, want EEXIST", err)
	}
	if err := netlinkAck([]byte{1, 2}); err == nil {
		t.Fatal("short answer accepted")
	}
}

func TestCmdlineNetwork(t *testing.T) {
	c, warns := ParseCmdline("boxctl.ip=10.0.2.15/24 boxctl.gw=10.0.2.2 boxctl.dns=10.0.2.3")
	if c.Addr != netip.MustParsePrefix("10.0.2.15/24") || c.Gateway != netip.MustParseAddr("10.0.2.2") || len(warns) != 0 {
		t.Fatalf("%+v %v", c, warns)
	}
	if m := prefixMask(24); m != [4]byte{255, 255, 255, 0} {
		t.Fatalf("mask %v", m)
	}
	_, warns = ParseCmdline("boxctl.ip=banana boxctl.gw=::1")
	if len(warns) != 2 {
		t.Fatalf("bad values not warned about: %v", warns)
	}
}

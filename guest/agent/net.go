package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// setupNetwork gives the VM's first ethernet interface a static address
// and a default route (boxctl.ip=ADDR/PREFIX, boxctl.gw=ADDR). With QEMU's
// user-mode networking these are fixed (10.0.2.15/24 behind 10.0.2.2), so
// no DHCP client is needed.
func setupNetwork(addr netip.Prefix, gw netip.Addr, wait time.Duration) (string, error) {
	name, err := waitEthernet(wait)
	if err != nil {
		return "", err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return name, err
	}
	defer unix.Close(fd)
	set := func(req uint, ip []byte, what string) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		if err := ifr.SetInet4Addr(ip); err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, req, ifr); err != nil {
			return fmt.Errorf("set %s of %s: %w", what, name, err)
		}
		return nil
	}
	ip := addr.Addr().As4()
	if err := set(unix.SIOCSIFADDR, ip[:], "address"); err != nil {
		return name, err
	}
	mask := prefixMask(addr.Bits())
	if err := set(unix.SIOCSIFNETMASK, mask[:], "netmask"); err != nil {
		return name, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return name, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return name, fmt.Errorf("get %s flags: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return name, fmt.Errorf("set %s up: %w", name, err)
	}
	if !gw.IsValid() {
		return name, nil
	}
	ifi, err := unix.NewIfreq(name)
	if err != nil {
		return name, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifi); err != nil {
		return name, fmt.Errorf("index of %s: %w", name, err)
	}
	// A restored guest re-applies its configuration: the route it has already is the one
	// wanted (addresses set again to the same value are no-ops in the kernel).
	if err := addDefaultRoute(gw, int32(ifi.Uint32())); err != nil && !errors.Is(err, unix.EEXIST) {
		return name, fmt.Errorf("default route via %s: %w", gw, err)
	}
	return name, nil
}

func prefixMask(bits int) [4]byte {
	var m [4]byte
	binary.BigEndian.PutUint32(m[:], ^uint32(0)<<(32-bits))
	return m
}

// waitEthernet returns the first network interface other than lo, waiting
// for the driver to register one.
func waitEthernet(wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		entries, _ := os.ReadDir("/sys/class/net")
		var names []string
		for _, e := range entries {
			if e.Name() != "lo" {
				names = append(names, e.Name())
			}
		}
		if len(names) > 0 {
			sort.Strings(names)
			return names[0], nil
		}
		if time.Now().After(deadline) {
			return "", errors.New("no network interface appeared (is the VM's NIC a virtio-net device?)")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// addDefaultRoute adds 0.0.0.0/0 via gw on interface index ifindex, over
// rtnetlink (the ioctl interface for routes has an awkward, per-arch
// struct layout).
func addDefaultRoute(gw netip.Addr, ifindex int32) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	msg := routeMessage(gw, ifindex, 1)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	return netlinkAck(buf[:n])
}

// routeMessage encodes an RTM_NEWROUTE request for a default route.
func routeMessage(gw netip.Addr, ifindex int32, seq uint32) []byte {
	attr := func(typ uint16, data []byte) []byte {
		b := make([]byte, unix.SizeofRtAttr+len(data))
		binary.NativeEndian.PutUint16(b[0:], uint16(len(b)))
		binary.NativeEndian.PutUint16(b[2:], typ)
		copy(b[unix.SizeofRtAttr:], data)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	g := gw.As4()
	oif := binary.NativeEndian.AppendUint32(nil, uint32(ifindex))
	body := []byte{
		unix.AF_INET,           // family
		0,                      // dst_len: default route
		0,                      // src_len
		0,                      // tos
		unix.RT_TABLE_MAIN,     // table
		unix.RTPROT_BOOT,       // protocol
		unix.RT_SCOPE_UNIVERSE, // scope
		unix.RTN_UNICAST,       // type
		0, 0, 0, 0,             // flags
	}
	body = append(body, attr(unix.RTA_GATEWAY, g[:])...)
	body = append(body, attr(unix.RTA_OIF, oif)...)
	hdr := make([]byte, unix.SizeofNlMsghdr)
	binary.NativeEndian.PutUint32(hdr[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(hdr[4:], unix.RTM_NEWROUTE)
	binary.NativeEndian.PutUint16(hdr[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	binary.NativeEndian.PutUint32(hdr[8:], seq)
	return append(hdr, body...)
}

// netlinkAck reads the kernel's NLMSG_ERROR answer: error 0 is success.
func netlinkAck(b []byte) error {
	if len(b) < unix.SizeofNlMsghdr+4 {
		return fmt.Errorf("short netlink answer (%d bytes)", len(b))
	}
	if typ := binary.NativeEndian.Uint16(b[4:]); typ != unix.NLMSG_ERROR {
		return fmt.Errorf("unexpected netlink answer type %d", typ)
	}
	if code := int32(binary.NativeEndian.Uint32(b[unix.SizeofNlMsghdr:])); code != 0 {
		return unix.Errno(-code)
	}
	return nil
}

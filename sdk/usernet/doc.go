// Package usernet is the user-mode network of one VM: a TCP/IP stack
// (gVisor's netstack) that runs in the VMM's host process, terminates the
// guest's connections and re-makes them from the host, so a box gets
// outbound network access, DNS and port forwards without root, a tap device
// or a bridge — and, unlike QEMU's built-in slirp, every destination goes
// through a policy first.
//
// # Wire
//
// The guest's ethernet frames travel over one socket. On a stream socket each
// frame is prefixed by its length as a 4-byte big-endian integer: QEMU's
// "-netdev socket,fd=N" and "-netdev stream", passt, and libkrun's
// krun_add_net_unixstream all use this framing. A connected unix datagram
// socket (LocalAddr().Network() == "unixgram", e.g. one end of a
// socketpair(AF_UNIX, SOCK_DGRAM)) carries one frame per datagram instead,
// as vfkit and gvproxy do; QEMU's "-netdev socket,fd=N" accepts that too.
// A datagram socket has no end-of-file, so there Serve notices that the VMM
// is gone only when it next sends the guest a frame; a VMM that knows its
// VM exited cancels Serve's context or calls Close.
//
// # Addresses
//
// The layout is QEMU slirp's, so a guest configured for slirp needs no
// change: network 10.0.2.0/24 (Subnet), the guest at 10.0.2.15 (GuestAddr),
// the gateway at 10.0.2.2 (GatewayAddr) and a DNS forwarder at 10.0.2.3
// (DNSAddr); MTU 1500. The stack answers ARP for the gateway and DNS
// addresses only and learns the guest's MAC from its traffic. There is no
// DHCP: the guest configures its address statically.
//
// # What the guest can reach
//
// A guest TCP connection or UDP flow to any address is checked, then dialled
// from the host process; a refused TCP connection gets a reset and a refused
// UDP datagram is dropped; both are counted in Stats and logged at debug
// level. The built-in host-protection rule always applies first:
//
//   - the host's loopback (127.0.0.0/8, ::1), every address of every host
//     interface (and their subnet broadcast addresses), and the gateway
//     10.0.2.2 are refused unless Config.AllowHostLoopback is set; with it,
//     10.0.2.2:P means 127.0.0.1:P on the host, as with slirp;
//   - unspecified (0.0.0.0/8), multicast and broadcast destinations and the
//     rest of 10.0.2.0/24 are always refused.
//
// Config.Allow, when not empty, is an egress allow-list applied after that
// rule (it cannot widen it either): only its CIDRs and host names (with
// their ports) are dialled, only its host names are answered at DNSAddr
// (others get REFUSED), and datagrams to any other nameserver are dropped
// like any other destination. Host names are resolved from the host
// process through the host's nameservers when Serve starts and again
// before each answer's TTL ends (clamped to 5 s .. 1 h); the addresses of
// the guest's own answers for those names count too, for their TTL.
// Config.Policy, when set, is consulted after both (it cannot widen them).
// DNS queries to 10.0.2.3:53 (UDP and TCP) are answered by forwarding them
// from the host process to the nameservers in the host's resolv.conf, so a
// resolver on the host's loopback (systemd-resolved) works even though the
// guest cannot reach the loopback itself; SERVFAIL when none answers. ICMP
// echo is answered for 10.0.2.2 and 10.0.2.3 only; echo requests to other
// destinations are dropped rather than faked.
//
// # Use from a VMM (QEMU)
//
// Make a socketpair, pass one end to QEMU and the other to Serve:
//
//	n, err := usernet.New(usernet.Config{Ports: ports, Logger: log})
//	if err != nil { ... }          // e.g. a host port already in use
//	defer n.Close()
//	fds, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
//	qemuEnd := os.NewFile(uintptr(fds[0]), "net-qemu")
//	ourEnd := os.NewFile(uintptr(fds[1]), "net-host")
//	conn, _ := net.FileConn(ourEnd) // dups the fd
//	ourEnd.Close()
//	cmd := exec.Command("qemu-system-x86_64", ...,
//		"-netdev", "socket,id=net0,fd=3",
//		"-device", "virtio-net-pci,netdev=net0,romfile=")
//	cmd.ExtraFiles = []*os.File{qemuEnd} // becomes fd 3 in QEMU
//	cmd.Start()
//	qemuEnd.Close()
//	go n.Serve(ctx, conn) // returns when QEMU closes its end or ctx ends
//
// and give the guest boxctl.ip=10.0.2.15/24 boxctl.gw=10.0.2.2
// boxctl.dns=10.0.2.3 (or the equivalent for another guest). Port forwards
// are bound by New, before the VM starts, so a port that is in use fails
// the start with a clear error instead of a half-started VM.
package usernet

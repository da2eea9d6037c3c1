package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// reidentify is the PID 1 side of the Reidentify call (Config.Reidentify). The random pool
// comes first: whatever the guest does after this call, including the rest of it, draws
// from a reseeded generator.
func (p *pid1) reidentify(_ context.Context, id Identity) (Reidentified, error) {
	var r Reidentified
	bits, err := addEntropy("/dev/urandom", id.Entropy)
	if err != nil {
		return r, fmt.Errorf("reseed the kernel random generator: %w", err)
	}
	r.EntropyBits = bits

	step, err := stepClock(id.Now)
	if err != nil {
		return r, fmt.Errorf("set the clock to %s: %w", id.Now.Format(time.RFC3339Nano), err)
	}
	r.ClockStep = step

	var uts unix.Utsname
	_ = unix.Uname(&uts)
	r.PreviousHostname = unix.ByteSliceToString(uts.Nodename[:])
	if err := unix.Sethostname([]byte(id.Hostname)); err != nil {
		return r, fmt.Errorf("sethostname %s: %w", id.Hostname, err)
	}
	if err := rewriteGeneratedEtc(generatedEtc, id.Hostname); err != nil {
		return r, err
	}

	if p.boot.Addr.IsValid() {
		dev, err := setupNetwork(p.boot.Addr, p.boot.Gateway, time.Second)
		if err != nil {
			return r, fmt.Errorf("re-apply the network configuration (%s via %s): %w", p.boot.Addr, p.boot.Gateway, err)
		}
		r.NetworkReapplied = true
		if err := flushNeighbours("/proc/net/arp"); err != nil {
			r.Warnings = append(r.Warnings, fmt.Sprintf("flush the neighbour cache of %s: %v", dev, err))
		}
	}
	return r, nil
}

// generatedFiles are the /etc files the agent mounts into the box root, by name: the host
// name's always, resolv.conf only when the boot configuration names resolvers.
func generatedFiles(hostname string, dns []string) map[string]string {
	files := map[string]string{
		"hostname": hostname + "\n",
		"hosts":    fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n", hostname),
	}
	if len(dns) > 0 {
		var b strings.Builder
		for _, s := range dns {
			fmt.Fprintf(&b, "nameserver %s\n", s)
		}
		files["resolv.conf"] = b.String()
	}
	return files
}

// rewriteGeneratedEtc gives the generated hostname and hosts files in dir a new host name.
// They are rewritten in place, never replaced: each is bind-mounted into the box root, and
// a bind mount holds the inode it was made of, so a renamed-over file would never be seen
// in the box. A file that is not there (the box root was never mounted) is left alone.
func rewriteGeneratedEtc(dir, hostname string) error {
	files := generatedFiles(hostname, nil)
	for _, name := range []string{"hostname", "hosts"} {
		path := filepath.Join(dir, name)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|unix.O_NOFOLLOW, 0)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("rewrite /etc/%s of the box: %w", name, err)
		}
		_, err = f.WriteString(files[name])
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("rewrite /etc/%s of the box: %w", name, err)
		}
	}
	return nil
}

// addEntropy mixes b into the kernel's random pool through the device at path, crediting
// 8 bits a byte (RNDADDENTROPY), and makes the CRNG reseed from the pool at once
// (RNDRESEEDCRNG) rather than at its next scheduled reseed: a guest restored from a
// snapshot would otherwise keep producing the snapshot's stream for up to a minute. It
// returns the bits credited. Both ioctls need CAP_SYS_ADMIN.
func addEntropy(path string, b []byte) (int, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	info := randPoolInfo(b)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); errno != 0 {
		return 0, fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), unix.RNDRESEEDCRNG, 0); err != nil {
		return 0, fmt.Errorf("RNDRESEEDCRNG: %w", err)
	}
	return 8 * len(b), nil
}

// randPoolInfo encodes struct rand_pool_info { int entropy_count; int buf_size; __u32
// buf[]; } for RNDADDENTROPY, crediting every bit of b. The buffer is padded to whole
// __u32 words; buf_size stays the byte count.
func randPoolInfo(b []byte) []byte {
	words := (len(b) + 3) / 4
	info := make([]byte, 8+4*words)
	binary.NativeEndian.PutUint32(info[0:], uint32(8*len(b)))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	return info
}

// stepClock sets CLOCK_REALTIME to now and returns how far it moved it.
func stepClock(now time.Time) (time.Duration, error) {
	before := time.Now()
	ts := unix.NsecToTimespec(now.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return 0, err
	}
	return now.Sub(before.Round(0)), nil
}

// neighbour is one IPv4 neighbour-cache entry.
type neighbour struct {
	addr netip.Addr
	dev  string
}

// readNeighbours parses /proc/net/arp (IP address, HW type, Flags, HW address, Mask,
// Device).
func readNeighbours(path string) ([]neighbour, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []neighbour
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		a, err := netip.ParseAddr(fields[0])
		if err != nil || !a.Is4() {
			continue
		}
		out = append(out, neighbour{addr: a, dev: fields[5]})
	}
	return out, sc.Err()
}

// flushNeighbours deletes every IPv4 neighbour-cache entry (SIOCDARP), so that a restored
// guest resolves its peers again instead of trusting what the saved VM had learnt.
func flushNeighbours(arpTable string) error {
	entries, err := readNeighbours(arpTable)
	if err != nil || len(entries) == 0 {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var errs []error
	for _, e := range entries {
		req := arpRequest(e)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCDARP, uintptr(unsafe.Pointer(&req[0]))); errno != 0 && errno != unix.ENXIO {
			errs = append(errs, fmt.Errorf("%s on %s: %w", e.addr, e.dev, errno))
		}
	}
	return errors.Join(errs...)
}

// arpRequest encodes struct arpreq { struct sockaddr arp_pa, arp_ha; int arp_flags; struct
// sockaddr arp_netmask; char arp_dev[16]; } naming e's address and device.
func arpRequest(e neighbour) []byte {
	const sockaddrLen = 16
	req := make([]byte, 3*sockaddrLen+4+unix.IFNAMSIZ)
	binary.NativeEndian.PutUint16(req[0:], unix.AF_INET) // arp_pa: sockaddr_in
	a := e.addr.As4()
	copy(req[4:8], a[:])
	copy(req[3*sockaddrLen+4:len(req)-1], e.dev)
	return req
}

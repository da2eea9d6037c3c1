package usernet

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestQEMUGuest boots a real Linux guest under QEMU with its NIC on
// "-netdev socket,fd=N" (the way a VMM uses this package) and checks from
// inside it: a remote HTTP server is reachable, the host's loopback (via
// the gateway) and the host's own address are refused, DNS answers through
// 10.0.2.3; and from the host, a port forward reaches the guest's httpd.
//
// The guest is the kernel and initramfs of build/guest (guest/build.sh),
// started with a busybox script (rdinit) instead of the agent.
func TestQEMUGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	t.Run("stream", func(t *testing.T) { testQEMUGuest(t, unix.SOCK_STREAM) })
	t.Run("dgram", func(t *testing.T) { testQEMUGuest(t, unix.SOCK_DGRAM) })
}

func testQEMUGuest(t *testing.T, linkType int) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed")
	}
	kernel, initrd := guestImage(t)
	bbox := staticBusybox(t)
	srv := startRemoteServer(t)
	dns := startDNSServer(t)
	rc := writeResolvConf(t, "nameserver "+dns.addr.String())

	// Host services the guest must not reach.
	loHTTP := newHTTPServer(t, "127.0.0.1:0")
	anyHTTP := newHTTPServer(t, "0.0.0.0:0")
	own := hostAddress(t)

	fwdPort := freePort(t, "tcp")
	n, err := New(Config{
		ResolvConf: rc,
		Ports:      []PortForward{{Protocol: "tcp", HostIP: "127.0.0.1", HostPort: fwdPort, GuestPort: 80}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	script := fmt.Sprintf(`#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /www /etc
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in failover net_failover virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_net; do
	f=$(find /lib/modules -name "$m.ko" | head -n 1)
	[ -n "$f" ] && insmod "$f"
done
i=0; while ! ip link show eth0 >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "nameserver 10.0.2.3" > /etc/resolv.conf
check() { name=$1; shift; out=$("$@" 2>&1); rc=$?; echo "USERNET $name rc=$rc $(echo $out | tr '\n' ' ')"; }
# busybox's static wget crashes in glibc's service lookup; nc speaks HTTP/1.0 well enough.
get() { printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 20 "$1" "$2" | tail -n 1; }
check remote get %[1]s
check gateway get 10.0.2.2 %[2]d
check hostaddr get %[3]s
check dns nslookup box.test
echo guest-ok > /www/index.html
httpd -p 80 -h /www
echo "USERNET ready"
sleep 600
`, srv.addr.String()+" "+fmt.Sprint(srv.httpPort), loHTTP.port(), own.String()+" "+fmt.Sprint(anyHTTP.port()))

	dir := t.TempDir()
	initramfs := filepath.Join(dir, "initramfs")
	writeInitramfs(t, initramfs, initrd, map[string]cpioFile{
		"usernet-init": {mode: 0o100755, data: []byte(script)},
		"bin/busybox":  {mode: 0o100755, path: bbox},
	})

	vmEnd, hostEnd := socketPair(t, linkType)
	vmFile, err := vmEnd.(*net.UnixConn).File()
	if err != nil {
		t.Fatal(err)
	}
	vmEnd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	serveErr := make(chan error, 1)
	go func() { serveErr <- n.Serve(ctx, hostEnd) }()

	cmd := exec.Command(qemu,
		"-M", "q35", "-accel", "tcg,thread=single", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-kernel", kernel, "-initrd", initramfs,
		"-append", "console=ttyS0 quiet panic=-1 rdinit=/usernet-init",
		"-serial", "stdio",
		"-netdev", "socket,id=net0,fd=3",
		"-device", "virtio-net-pci,netdev=net0,romfile=,mac=52:54:00:12:34:56",
	)
	cmd.ExtraFiles = []*os.File{vmFile}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	vmFile.Close()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Kill() // our own child
		<-exited
	}()

	results := make(map[string]string)
	var console strings.Builder
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for results["ready"] == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the guest ended before it was ready:\n%s\nQEMU: %s", console.String(), stderr.String())
			}
			console.WriteString(l + "\n")
			if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "USERNET "); ok {
				name, res, _ := strings.Cut(rest, " ")
				results[name] = res + " "
			}
		case <-ctx.Done():
			t.Fatalf("timed out waiting for the guest:\n%s\nQEMU: %s", console.String(), stderr.String())
		}
	}
	t.Logf("guest console:\n%s", console.String())

	if r := results["remote"]; !strings.HasPrefix(r, "rc=0 remote-ok") {
		t.Errorf("guest → remote HTTP server %s:%d: %q, want rc=0 remote-ok", srv.addr, srv.httpPort, r)
	}
	for _, name := range []string{"gateway", "hostaddr"} {
		if r := results[name]; !strings.Contains(r, "Connection refused") {
			t.Errorf("guest → %s: %q; want the connection refused", name, r)
		}
	}
	if loHTTP.count()+anyHTTP.count() != 0 {
		t.Errorf("host-only HTTP servers got %d requests from the guest", loHTTP.count()+anyHTTP.count())
	}
	if r := results["dns"]; !strings.HasPrefix(r, "rc=0") || !strings.Contains(r, "192.0.2.99") {
		t.Errorf("guest nslookup box.test: %q, want 192.0.2.99", r)
	}

	// Host → guest through the port forward.
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/", fwdPort))
	if err != nil {
		t.Fatalf("GET through the port forward: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(body)) != "guest-ok" {
		t.Errorf("GET through the port forward: %q, want guest-ok", body)
	}

	st := n.Stats()
	t.Logf("stats: %+v", st)
	if st.DeniedTCP < 2 || st.DNSQueries == 0 || st.TCPConns < 1 || st.ForwardedConns != 1 {
		t.Errorf("stats do not show the traffic: %+v", st)
	}
	// QEMU closing its end of the link ends Serve. A datagram socket has
	// no end-of-file: there the next frame to the guest (the SYN of a new
	// forwarded connection) finds the peer gone.
	_ = cmd.Process.Kill()
	<-exited
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", fwdPort), 5*time.Second); err == nil {
		defer c.Close()
	}
	select {
	case err := <-serveErr:
		if err != nil {
			t.Errorf("Serve after QEMU exited: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Serve did not return after QEMU exited")
	}
}

// guestImage finds build/guest's kernel and initramfs above the package.
func guestImage(t *testing.T) (kernel, initrd string) {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		k, i := filepath.Join(dir, "build/guest/vmlinuz"), filepath.Join(dir, "build/guest/initramfs")
		if _, err := os.Stat(k); err == nil {
			if _, err := os.Stat(i); err == nil {
				return k, i
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			t.Skip("no guest kernel in build/guest: run guest/build.sh")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("no guest kernel in build/guest: run guest/build.sh")
		}
		dir = parent
	}
}

func staticBusybox(t *testing.T) string {
	p, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox (busybox-static) is not installed")
	}
	f, err := elf.Open(p)
	if err != nil {
		t.Skipf("busybox: %v", err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Skip("busybox is dynamically linked: install busybox-static")
		}
	}
	return p
}

type cpioFile struct {
	mode uint32
	data []byte
	path string // read data from here instead
}

// writeInitramfs writes base followed by a newc archive of files; the
// kernel unpacks both.
func writeInitramfs(t *testing.T, out, base string, files map[string]cpioFile) {
	b, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.Write(b)
	for buf.Len()%512 != 0 {
		buf.WriteByte(0)
	}
	ino := 900000
	entry := func(name string, mode uint32, data []byte) {
		ino++
		fmt.Fprintf(&buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		buf.WriteString(name)
		buf.WriteByte(0)
		for buf.Len()%4 != 0 {
			buf.WriteByte(0)
		}
		buf.Write(data)
		for buf.Len()%4 != 0 {
			buf.WriteByte(0)
		}
	}
	entry("bin", 0o40755, nil)
	for name, f := range files {
		data := f.data
		if f.path != "" {
			if data, err = os.ReadFile(f.path); err != nil {
				t.Fatal(err)
			}
		}
		entry(name, f.mode, data)
	}
	entry("TRAILER!!!", 0, nil)
	for buf.Len()%512 != 0 {
		buf.WriteByte(0)
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// httpServer is a host HTTP server counting its requests.
type httpServer struct {
	l    net.Listener
	reqs chan struct{}
}

func newHTTPServer(t *testing.T, addr string) *httpServer {
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &httpServer{l: l, reqs: make(chan struct{}, 100)}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.reqs <- struct{}{}
		fmt.Fprint(w, "host-only")
	})}
	go func() { _ = hs.Serve(l) }()
	t.Cleanup(func() {
		if err := hs.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Log(err)
		}
	})
	return s
}

func (s *httpServer) port() uint16 { return uint16(s.l.Addr().(*net.TCPAddr).Port) }
func (s *httpServer) count() int   { return len(s.reqs) }

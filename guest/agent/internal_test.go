package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const testPasswd = `root:x:0:0:root:/root:/bin/sh
# a comment
guest:x:1000:1000:Guest:/home/guest:/bin/sh
broken line
nohome:x:1001:1001::
`

const testGroup = `root:x:0:
staff:x:50:guest,other
guest:x:1000:
audio:x:29: guest
wheel:x:10:root
`

func TestResolveUser(t *testing.T) {
	cases := []struct {
		spec    string
		want    execUser
		wantErr error
	}{
		{spec: "", want: execUser{name: "root", uid: 0, gid: 0, home: "/root", groups: []uint32{10}}},
		{spec: "root", want: execUser{name: "root", uid: 0, gid: 0, home: "/root", groups: []uint32{10}}},
		{spec: "guest", want: execUser{name: "guest", uid: 1000, gid: 1000, home: "/home/guest", groups: []uint32{29, 50}}},
		{spec: "1000", want: execUser{name: "guest", uid: 1000, gid: 1000, home: "/home/guest", groups: []uint32{29, 50}}},
		{spec: "1000:50", want: execUser{name: "guest", uid: 1000, gid: 50, home: "/home/guest", groups: []uint32{29, 50}}},
		{spec: "guest:staff", want: execUser{name: "guest", uid: 1000, gid: 50, home: "/home/guest", groups: []uint32{29, 50}}},
		{spec: "4242", want: execUser{uid: 4242, gid: 0, home: "/"}},
		{spec: "4242:4243", want: execUser{uid: 4242, gid: 4243, home: "/"}},
		{spec: "nohome", want: execUser{name: "nohome", uid: 1001, gid: 1001, home: "/"}},
		{spec: "nobody", wantErr: ErrUnknownUser},
		{spec: "guest:nogroup", wantErr: ErrUnknownUser},
		{spec: ":50", wantErr: errors.New("any")},
		{spec: "guest:", wantErr: errors.New("any")},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := resolveUser(tc.spec, []byte(testPasswd), []byte(testGroup))
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("resolveUser(%q) = %+v, want error", tc.spec, got)
				}
				if tc.wantErr.Error() != "any" && !errors.Is(err, tc.wantErr) {
					t.Fatalf("error = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("resolveUser(%q) = %+v, want %+v", tc.spec, got, tc.want)
			}
		})
	}
	// No passwd/group files at all (a scratch image): numeric users still work.
	got, err := resolveUser("0", nil, nil)
	if err != nil || got.uid != 0 || got.home != "/" {
		t.Errorf("without passwd: %+v, %v", got, err)
	}
	if _, err := resolveUser("root", nil, nil); !errors.Is(err, ErrUnknownUser) {
		t.Errorf("named user without passwd: err = %v", err)
	}
}

func TestParseCmdline(t *testing.T) {
	c, warn := ParseCmdline("console=ttyS0 quiet boxctl.root=/dev/sda boxctl.data=none boxctl.hostname=web " +
		"boxctl.dns=10.0.2.3,1.1.1.1 boxctl.vsock_port=2000 boxctl.debug boxctl.bogus=1 boxctl.vsock_port=x")
	want := BootConfig{RootDev: "/dev/sda", RootFSType: "ext4", DataDev: "none", DataFSType: "ext4",
		Hostname: "web", DNS: []string{"10.0.2.3", "1.1.1.1"}, VsockPort: 2000, SerialPort: "boxctl.agent", Debug: true, ShareFS: "9p"}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
	if len(warn) != 2 {
		t.Errorf("warnings = %q, want 2 (unknown parameter, bad port)", warn)
	}
	d, _ := ParseCmdline("")
	if d.RootDev != "vda" || d.DataDev != "vdb" || d.VsockPort != 1024 || d.Hostname != "box" {
		t.Errorf("defaults = %+v", d)
	}
}

func TestModuleLoadOrder(t *testing.T) {
	dir := t.TempDir()
	dep := `kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
`
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("modules.dep", dep)
	write("modules.builtin", "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n")
	ms, err := readModuleSet(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := func(skip map[string]bool) string {
		order, err := ms.loadOrder(skip)
		if err != nil {
			t.Fatal(err)
		}
		names := make([]string, len(order))
		for i, m := range order {
			names[i] = moduleName(m)
		}
		return strings.Join(names, " ")
	}
	if got := names(nil); got != "virtio virtio_ring virtio_pci virtio_blk" {
		t.Errorf("load order = %s", got)
	}
	// A skipped module still loads when another needs it.
	if got := names(map[string]bool{"virtio_blk": true, "virtio_ring": true}); got != "virtio virtio_ring virtio_pci" {
		t.Errorf("load order skipping virtio_blk and virtio_ring = %s", got)
	}

	write("modules.dep", "a.ko: b.ko\nb.ko: a.ko\n")
	ms, err = readModuleSet(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ms.loadOrder(nil); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle not detected: %v", err)
	}
	if moduleName("kernel/arch/x86/crypto/crc32c-intel.ko.xz") != "crc32c_intel" {
		t.Error("moduleName does not normalise")
	}
}

func TestFindVirtioPort(t *testing.T) {
	sysfs := t.TempDir()
	for port, name := range map[string]string{"vport1p1": "org.qemu.guest_agent.0", "vport2p1": "boxctl.agent"} {
		d := filepath.Join(sysfs, "class/virtio-ports", port)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "name"), []byte(name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dev, err := findVirtioPort(sysfs, "boxctl.agent")
	if err != nil || dev != "/dev/vport2p1" {
		t.Errorf("findVirtioPort = %q, %v", dev, err)
	}
	if _, err := findVirtioPort(sysfs, "missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing port: err = %v", err)
	}
}

func TestMountinfoUnescape(t *testing.T) {
	if got := unescapeMountinfo(`/run/boxctl/root/a\040b`); got != "/run/boxctl/root/a b" {
		t.Errorf("got %q", got)
	}
	if got := unescapeMountinfo(`/trailing\04`); got != `/trailing\04` {
		t.Errorf("got %q", got)
	}
}

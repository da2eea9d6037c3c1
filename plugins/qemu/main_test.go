package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/guest/vmtest"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// The test binary doubles as the plugin binary: run by StartPlugin it
// serves the plugin, run from a plan it is the launcher.
func TestMain(m *testing.M) {
	hs := sdk.Handshake()
	if os.Getenv(hs.MagicCookieKey) == hs.MagicCookieValue || (len(os.Args) == 3 && os.Args[1] == "launch") ||
		(len(os.Args) > 1 && os.Args[1] == "virtiofsd-exec") {
		main()
		return
	}
	os.Exit(m.Run())
}

// TestConformance runs the VMM suite against the plugin binary with the
// real guest under TCG: one VM boots (busybox image root, a qcow2 writable
// disk over a raw base given as an explicit chain) and is shared by the
// checks that need it; HandleFromAFreshPluginProcess stops it from a new
// plugin process. The guest's files are on its writable disk, so the
// DiskSwitch checks see where its writes go (WithGuestWrites).
func TestConformance(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 not found: install qemu-system-x86 (scripts/install-deps.sh)")
	}
	root, err := vmtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	kernel, initrd := filepath.Join(root, "build", "guest", "vmlinuz"), filepath.Join(root, "build", "guest", "initramfs")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("guest %v: run `make guest` to build the guest kernel and initramfs", err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("accel = \"tcg\"\nkernel = %q\ninitrd = %q\n", kernel, initrd)
	newVMM := func(t *testing.T) sdk.VMM {
		vmm := sdktest.StartPlugin(t, exe).VMM
		if err := vmm.Configure(context.Background(), &sdk.Config{Filename: "t.hcl", Body: []byte(body), BodyStart: hcl.InitialPos}); err != nil {
			t.Fatal(err)
		}
		return vmm
	}
	sdktest.VMMConformance(t, newVMM,
		sdktest.WithReconnect(newVMM),
		sdktest.WithDisks(boxDisks),
		sdktest.WithGuest(agentReady),
		sdktest.WithGuestWrites(nil),
		sdktest.WithGuestDialer(ncDial))
}

// ncDial connects from the guest with the busybox image's nc, run by the
// guest agent: a refused connection makes nc fail.
func ncDial(ctx context.Context, socket, addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	c, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return "", err
	}
	defer c.Close()
	var out, errs strings.Builder
	res, err := c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"nc", "-w", "5", host, port}, Timeout: 20 * time.Second},
		strings.NewReader(""), &out, &errs, nil, nil)
	if err != nil {
		return "", err
	}
	if res.ExitCode != 0 {
		return out.String(), fmt.Errorf("nc %s %s: exit %d: %s", host, port, res.ExitCode, errs.String())
	}
	return out.String(), nil
}

// boxDisks are what the core gives a box: the image's ext4 root, and a
// qcow2 writable disk whose chain (a blank ext4 base) is passed explicitly.
func boxDisks(t *testing.T, dir string) []sdk.DiskSpec {
	t.Helper()
	root, base, top := filepath.Join(dir, "root.ext4"), filepath.Join(dir, "base.raw"), filepath.Join(dir, "disk.qcow2")
	if err := vmtest.MakeRootDisk(context.Background(), root); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) {
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
	}
	run("truncate", "-s", "64M", base)
	run("mkfs.ext4", "-q", "-F", "-L", "data", base)
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top)
	return []sdk.DiskSpec{
		{Path: root, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
		{Path: top, Format: "qcow2", Role: sdk.DiskRoleWritable, BackingChain: []sdk.ChainFile{{Path: base, Format: "raw"}}},
	}
}

// agentReady waits for the guest agent as the core does.
func agentReady(ctx context.Context, socket string) error {
	c, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.WaitReady(ctx)
	return err
}

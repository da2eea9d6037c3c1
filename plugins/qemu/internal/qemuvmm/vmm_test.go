package qemuvmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/internal/kvmprobe"
	"github.com/boxctl/boxctl/plugins/qemu/internal/qmp"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// serve returns a client of the plugin served in-process over real gRPC.
func serve(t *testing.T, exe string) sdk.VMMClient {
	t.Helper()
	return sdktest.Serve(t, sdk.ServeConfig{VMM: New(hclog.NewNullLogger(), exe)}).VMM
}

func configure(t *testing.T, vmm sdk.VMM, body string) error {
	t.Helper()
	return vmm.Configure(context.Background(), &sdk.Config{Filename: "boxctl.hcl", Body: []byte(body), BodyStart: hcl.Pos{Line: 2, Column: 11, Byte: 30}})
}

func TestConfigErrorsPointAtTheAttribute(t *testing.T) {
	// Configure is called once per plugin process: a fresh plugin each.
	newVMM := func() sdk.VMM { return serve(t, "/nonexistent/boxctl-plugin-qemu") }
	cases := []struct{ body, want string }{
		{"\n  accel = \"fast\"\n", `boxctl.hcl:3,11`},
		{"\n  kernel = \"/no/such/vmlinuz\"\n", `boxctl.hcl:3,12`},
		{"\n  qemu_binary = \"no-such-qemu\"\n", `boxctl.hcl:3,17`},
		{"\n  share_transport = \"nfs\"\n", `boxctl.hcl:3,21`},
		{"\n  virtiofsd = \"/no/such/virtiofsd\"\n", `boxctl.hcl:3,15`},
		{"\n  resolv_conf = \"/no/such/resolv.conf\"\n", `boxctl.hcl:3,17`},
		{"\n  resolv_conf = \"resolv.conf\"\n", `boxctl.hcl:3,17`},
		{"\n  acel = \"tcg\"\n", `boxctl.hcl:3,3`},
	}
	for _, c := range cases {
		err := configure(t, newVMM(), c.body)
		var diags hcl.Diagnostics
		if !errors.As(err, &diags) || diags[0].Subject == nil || !strings.HasPrefix(diags[0].Subject.String(), c.want) {
			t.Errorf("config %q: got %v (subject %v), want a diagnostic at %s", c.body, err, subject(diags), c.want)
		}
	}
	if err := configure(t, newVMM(), "\n  accel = \"tcg\"\n  machine = \"pc\"\n  kernel_args = [\"loglevel=3\"]\n"); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
}

func subject(d hcl.Diagnostics) string {
	if len(d) == 0 || d[0].Subject == nil {
		return "none"
	}
	return d[0].Subject.String()
}

func TestPlanBuildsTheQEMUCommand(t *testing.T) {
	dir := t.TempDir()
	guest := filepath.Join(dir, "guest")
	if err := os.MkdirAll(guest, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinuz", "initramfs", "root.ext4", "disk.qcow2", "mid.qcow2", "base.raw", "data.qcow2"} {
		p := filepath.Join(dir, f)
		if f == "vmlinuz" || f == "initramfs" {
			p = filepath.Join(guest, f)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The plugin finds the guest in <its dir>/guest.
	vmm := serve(t, filepath.Join(dir, "boxctl-plugin-qemu"))
	if err := configure(t, vmm, "\n  accel = \"tcg\"\n  kernel_args = [\"extra=1\"]\n  share_transport = \"9p\"\n"); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	boot := guestboot.Default()
	boot.UserNetwork()
	spec := sdk.VMSpec{
		BoxID: "b1", VCPUs: 2, MemoryMiB: 256, RunDir: run, KernelArgs: boot.Args(),
		Disks: []sdk.DiskSpec{
			{Path: filepath.Join(dir, "root.ext4"), Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
			{Path: filepath.Join(dir, "disk.qcow2"), Format: "qcow2", Role: sdk.DiskRoleWritable, BackingChain: []sdk.ChainFile{
				{Path: filepath.Join(dir, "mid.qcow2"), Format: "qcow2"}, {Path: filepath.Join(dir, "base.raw"), Format: "raw"},
			}},
			{Path: filepath.Join(dir, "data.qcow2"), Format: "qcow2", Role: sdk.DiskRoleData},
		},
		Network: sdk.NetworkSpec{Mode: sdk.NetworkUser, Ports: []sdk.PortForward{{HostPort: 8080, GuestPort: 80}},
			Allow: []sdk.NetworkAllow{{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Port: 443}, {Host: "example.com"}}},
		Shares: []sdk.ShareSpec{{Tag: "boxctl0", HostPath: guest, ReadOnly: true}, {Tag: "boxctl1", HostPath: "/srv/a,b"}},
	}
	// An allow-list needs the user-mode network, and rules that hold.
	for _, bad := range []sdk.NetworkSpec{
		{Mode: sdk.NetworkNone, Allow: spec.Network.Allow},
		{Mode: sdk.NetworkUser, Allow: []sdk.NetworkAllow{{Host: "not a name"}}},
	} {
		s := spec
		s.Network = bad
		if _, err := vmm.Plan(context.Background(), s); !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), "spec.Network.Allow") {
			t.Errorf("Plan with network %+v: %v; want an invalid-argument error naming spec.Network.Allow", bad, err)
		}
	}
	plan, err := vmm.Plan(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Argv[1] != "launch" || plan.AgentSocket != filepath.Join(run, "agent.sock") || plan.ConsoleLog != filepath.Join(run, "console.log") {
		t.Fatalf("plan %+v", plan)
	}
	raw, err := os.ReadFile(plan.Argv[2])
	if err != nil {
		t.Fatal(err)
	}
	args := string(raw)
	for _, want := range []string{
		`"q35,accel=tcg"`, `"-smp"`, `"2"`, `"256M"`,
		`boxctl.root=vda`, `boxctl.data=vdb`, `extra=1`,
		`"HostPort": 8080`, `"GuestPort": 80`, `name=boxctl.agent`,
		`"Prefix": "192.0.2.0/24"`, `"Host": "example.com"`,
		`boxctl.ip=10.0.2.15/24`, `boxctl.gw=10.0.2.2`, `boxctl.dns=10.0.2.3`,
		`"-sandbox"`, `"on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"`,
		`virtio-blk-pci,drive=vda"`, `virtio-blk-pci,drive=vdb,werror=enospc,rerror=report"`,
		`"local,id=fs0,path=` + guest + `,security_model=none,readonly=on"`, `"virtio-9p-pci,fsdev=fs0,mount_tag=boxctl0"`,
		`"local,id=fs1,path=/srv/a,,b,security_model=none"`, `"virtio-9p-pci,fsdev=fs1,mount_tag=boxctl1"`,
		`boxctl.sharefs=9p`,
	} {
		if !strings.Contains(args, want) {
			t.Errorf("launch config lacks %s:\n%s", want, args)
		}
	}
	if strings.Contains(args, `"-drive"`) || strings.Contains(args, "-pidfile") {
		t.Errorf("launch config still lets QEMU open paths itself:\n%s", args)
	}
	// The guest's NIC goes to the launcher's user-mode network, never to
	// QEMU's slirp (which cannot keep the host's loopback closed).
	if strings.Contains(args, `"user,`) || !strings.Contains(args, `"socket,id=net0,fd=`) {
		t.Errorf("network is not the launcher's user-mode network:\n%s", args)
	}
	// Every file reaches QEMU as a descriptor; the chain is explicit, with
	// the image and the backing file read-only, and the last qcow2 node
	// without a backing file whatever its header says.
	var lc launchConfig
	if err := json.Unmarshal(raw, &lc); err != nil {
		t.Fatal(err)
	}
	nodes := blockdevs(t, lc)
	for name, want := range map[string]string{
		"vda-f":    `{"cache":{"direct":false,"no-flush":true},"driver":"file","filename":"/dev/fdset/%d","node-name":"vda-f","read-only":true}`,
		"vda":      `{"cache":{"direct":false,"no-flush":true},"driver":"raw","file":"vda-f","node-name":"vda","read-only":true}`,
		"vdb-b1-f": `{"cache":{"direct":false,"no-flush":false},"driver":"file","filename":"/dev/fdset/%d","node-name":"vdb-b1-f","read-only":true}`,
		"vdb-b1":   `{"backing":"vdb-b2","cache":{"direct":false,"no-flush":false},"driver":"qcow2","file":"vdb-b1-f","node-name":"vdb-b1","read-only":true}`,
		"vdb-b2":   `{"cache":{"direct":false,"no-flush":false},"driver":"raw","file":"vdb-b2-f","node-name":"vdb-b2","read-only":true}`,
		"vdb-f":    `{"cache":{"direct":false,"no-flush":false},"discard":"unmap","driver":"file","filename":"/dev/fdset/%d","node-name":"vdb-f","read-only":false}`,
		"vdc":      `{"backing":null,"cache":{"direct":false,"no-flush":false},"discard":"unmap","driver":"qcow2","file":"vdc-f","node-name":"vdc","read-only":false}`,
		"vdb":      `{"backing":"vdb-b1","cache":{"direct":false,"no-flush":false},"discard":"unmap","driver":"qcow2","file":"vdb-f","node-name":"vdb","read-only":false}`,
	} {
		got, ok := nodes[name]
		if !ok {
			t.Errorf("no block node %s in %v", name, nodes)
			continue
		}
		if strings.Contains(want, "%d") {
			want = fmt.Sprintf(want, fdOf(t, lc, got))
		}
		if got != want {
			t.Errorf("node %s:\n got %s\nwant %s", name, got, want)
		}
	}
	kinds := map[string]string{}
	for _, f := range lc.FDs {
		name := filepath.Base(f.Path)
		if f.Path == "" {
			name = "pair:" + f.Kind // socket pairs have no path
		}
		kinds[name] = f.Kind
	}
	for file, kind := range map[string]string{"root.ext4": fdDiskRO, "mid.qcow2": fdDiskRO, "base.raw": fdDiskRO, "disk.qcow2": fdDiskRW,
		"console.log": fdLog, "agent-serial.sock": fdListen, "qmp.sock": fdListen, "pair:events": fdEvents, "pair:net": fdNet, "data.qcow2": fdDiskRW} {
		if kinds[file] != kind {
			t.Errorf("%q is passed as %q, want %q (%v)", file, kinds[file], kind, lc.FDs)
		}
	}
	if plan.StateFile != filepath.Join(run, "vm-state.json") || lc.StateFile != plan.StateFile {
		t.Errorf("state file: plan %q, launcher %q", plan.StateFile, lc.StateFile)
	}
	// Bad specs are refused with the field named.
	valid := sdk.VMSpec{BoxID: "b", VCPUs: 1, MemoryMiB: 256, RunDir: run}
	bad := []struct {
		change func(*sdk.VMSpec)
		want   string
	}{
		{func(s *sdk.VMSpec) { s.VCPUs = 0 }, "spec.VCPUs"},
		{func(s *sdk.VMSpec) { s.MemoryMiB = 32 }, "spec.MemoryMiB"},
		{func(s *sdk.VMSpec) { s.RunDir = "" }, "spec.RunDir"},
		{func(s *sdk.VMSpec) { s.RunDir = "run" }, "spec.RunDir"},
		{func(s *sdk.VMSpec) { s.Network.Mode = 7 }, "spec.Network.Mode"},
		{func(s *sdk.VMSpec) { s.Disks = []sdk.DiskSpec{{Path: "/nope", Format: "raw"}} }, "spec.Disks[0] (/nope)"},
		{func(s *sdk.VMSpec) {
			s.Disks = []sdk.DiskSpec{{Path: filepath.Join(dir, "root.ext4"), Format: "raw"}, {Path: filepath.Join(dir, "root.ext4"), Format: "vmdk"}}
		}, "spec.Disks[1]"},
		{func(s *sdk.VMSpec) {
			s.Disks = []sdk.DiskSpec{{Path: filepath.Join(dir, "disk.qcow2"), Format: "qcow2", BackingChain: []sdk.ChainFile{{Path: "/nope", Format: "raw"}}}}
		}, "spec.Disks[0].BackingChain[0] (/nope)"},
		{func(s *sdk.VMSpec) {
			s.Disks = []sdk.DiskSpec{{Path: filepath.Join(dir, "disk.qcow2"), Format: "qcow2",
				BackingChain: []sdk.ChainFile{{Path: filepath.Join(dir, "base.raw"), Format: "raw"}, {Path: filepath.Join(dir, "mid.qcow2"), Format: "qcow2"}}}}
		}, "spec.Disks[0].BackingChain[0]"},
		{func(s *sdk.VMSpec) {
			for range 27 {
				s.Disks = append(s.Disks, sdk.DiskSpec{Path: filepath.Join(dir, "data.qcow2"), Format: "qcow2"})
			}
		}, "spec.Disks[26]"},
		{func(s *sdk.VMSpec) { s.Shares = []sdk.ShareSpec{{Tag: "a,b", HostPath: dir}} }, "spec.Shares[0].Tag"},
		{func(s *sdk.VMSpec) { s.Shares = []sdk.ShareSpec{{Tag: "t", HostPath: "rel"}} }, "spec.Shares[0].HostPath"},
		{func(s *sdk.VMSpec) { s.Sandbox = sdk.Sandbox{UID: 0x70000001} }, "spec.Sandbox"},
		{func(s *sdk.VMSpec) { s.Sandbox = sdk.Sandbox{Cgroup: "/tmp/evil"} }, "spec.Sandbox.Cgroup"},
		{func(s *sdk.VMSpec) { s.Sandbox = sdk.Sandbox{Cgroup: "/sys/fs/cgroup/../../etc"} }, "spec.Sandbox.Cgroup"},
	}
	for _, c := range bad {
		s := valid
		c.change(&s)
		if _, err := vmm.Plan(context.Background(), s); !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("plan of %+v: %v, want ErrInvalidArgument naming %s", s, err, c.want)
		}
	}
}

// TestBootArgumentsAreTheCoresOnly checks that the plugin renders none of
// the guest boot contract itself: the guest's command line is the plugin's
// console arguments, then the spec's KernelArgs (the core's rendering of
// sdk/guestboot), then the user's kernel_args.
func TestBootArgumentsAreTheCoresOnly(t *testing.T) {
	dir := t.TempDir()
	guest := filepath.Join(dir, "guest")
	if err := os.MkdirAll(guest, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinuz", "initramfs", "root.ext4"} {
		p := filepath.Join(guest, f)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vmm := serve(t, filepath.Join(dir, "boxctl-plugin-qemu"))
	if err := configure(t, vmm, "\n  accel = \"tcg\"\n  kernel_args = [\"user=1\"]\n"); err != nil {
		t.Fatal(err)
	}
	cmdline := func(spec sdk.VMSpec) string {
		t.Helper()
		plan, err := vmm.Plan(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(plan.Argv[2])
		if err != nil {
			t.Fatal(err)
		}
		var lc launchConfig
		if err := json.Unmarshal(raw, &lc); err != nil {
			t.Fatal(err)
		}
		for i, a := range lc.Args {
			if a == "-append" {
				return lc.Args[i+1]
			}
		}
		t.Fatalf("no -append in %v", lc.Args)
		return ""
	}
	spec := sdk.VMSpec{BoxID: "b", VCPUs: 1, MemoryMiB: 128, RunDir: t.TempDir(),
		Disks:   []sdk.DiskSpec{{Path: filepath.Join(guest, "root.ext4"), Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true}},
		Network: sdk.NetworkSpec{Mode: sdk.NetworkUser}}
	if got := cmdline(spec); strings.Contains(got, "boxctl.") || !strings.HasSuffix(got, " user=1") || !strings.HasPrefix(got, "console=ttyS0 ") {
		t.Errorf("without KernelArgs the command line is %q: want the plugin's console arguments and the user's, no boxctl.* key", got)
	}
	spec.KernelArgs = []string{"boxctl.root=vdz", "boxctl.ip=192.0.2.9/24"}
	if got := cmdline(spec); !strings.HasSuffix(got, " boxctl.root=vdz boxctl.ip=192.0.2.9/24 user=1") || strings.Count(got, "boxctl.") != 2 {
		t.Errorf("the command line is %q: want the spec's KernelArgs as they are, then the user's", got)
	}
}

func TestPlanWithoutGuestSaysHowToBuildIt(t *testing.T) {
	vmm := serve(t, filepath.Join(t.TempDir(), "boxctl-plugin-qemu"))
	if err := configure(t, vmm, ""); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BOXCTL_GUEST_DIR", "")
	_, err := vmm.Plan(context.Background(), sdk.VMSpec{BoxID: "b", VCPUs: 1, MemoryMiB: 128, RunDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "make guest") {
		t.Fatalf("got %v", err)
	}
}

// accel = "auto" follows the KVM probe, asks it once per plugin process,
// and says why; a forced accelerator never probes.
func TestAutoAccelFollowsTheKVMProbe(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		probe     kvmprobe.Result
		want, why string
	}{
		{kvmprobe.Result{Usable: true, Reason: "KVM ran the test guest in 90µs"}, "kvm", "KVM ran the test guest"},
		{kvmprobe.Result{Reason: "KVM runs guest code 1000× too slowly (emulated/nested KVM)"}, "tcg", "KVM not usable (KVM runs guest code 1000× too slowly"},
	} {
		probes := 0
		v := New(hclog.NewNullLogger(), "/x", WithKVMProbe(func(context.Context) kvmprobe.Result { probes++; return c.probe }))
		for range 2 {
			accel, why := v.chooseAccel(ctx, "auto")
			if accel != c.want || !strings.Contains(why, c.why) {
				t.Errorf("probe %+v: %s, %q; want %s, %q", c.probe, accel, why, c.want, c.why)
			}
		}
		if probes != 1 {
			t.Errorf("probe %+v: probed %d times, want once per process", c.probe, probes)
		}
		for _, forced := range []string{"kvm", "tcg"} {
			if accel, why := v.chooseAccel(ctx, forced); accel != forced || !strings.Contains(why, `accel = "`+forced+`"`) {
				t.Errorf("forced %s: %s, %q", forced, accel, why)
			}
		}
	}
}

// CheckHost: usable with the accelerator Plan would take when QEMU is
// found; not usable, saying how to install it, when not.
func TestCheckHost(t *testing.T) {
	ctx := context.Background()
	slow := kvmprobe.Result{Reason: "KVM runs guest code 1000× too slowly (emulated/nested KVM)"}
	v := New(hclog.NewNullLogger(), "/x", WithKVMProbe(func(context.Context) kvmprobe.Result { return slow }))
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 not found: install qemu-system-x86 (scripts/install-deps.sh)")
	}
	r, err := v.CheckHost(ctx)
	if err != nil || !r.Usable || r.Accelerator != "tcg" || !strings.Contains(r.Reason, "1000× too slowly") {
		t.Errorf("CheckHost with a slow KVM: %+v, %v", r, err)
	}
	v.cfg.QEMUBinary = "/nonexistent/qemu-system-x86_64"
	r, err = v.CheckHost(ctx)
	if err != nil || r.Usable || r.Accelerator != "" || !strings.Contains(r.Reason, "apt-get install qemu-system-x86") {
		t.Errorf("CheckHost without QEMU: %+v, %v", r, err)
	}
}

// The real probe on this host, through the plugin: whatever it finds, the
// plugin answers with a reason, within the probe's bound plus slack.
func TestCheckHostOnThisHost(t *testing.T) {
	v := New(hclog.NewNullLogger(), "/x")
	start := time.Now()
	r, err := v.CheckHost(context.Background())
	t.Logf("CheckHost: %+v (%v)", r, time.Since(start))
	if err != nil || r.Reason == "" {
		t.Errorf("CheckHost: %+v, %v", r, err)
	}
	if d := time.Since(start); d > kvmprobe.DefaultBound+3*time.Second {
		t.Errorf("CheckHost took %v", d)
	}
}

// TestControlThroughQMP drives a real QEMU (no guest: -machine none) through
// the plugin's Pause, Resume, Metrics and Stop.
func TestControlThroughQMP(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal("qemu-system-x86_64 not found: install qemu-system-x86 (scripts/install-deps.sh)")
	}
	dir, err := os.MkdirTemp("", "bxq")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.Command(qemu, "-machine", "none", "-nodefaults", "-nographic", "-qmp", "unix:"+sock+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	vmm := serve(t, "/x/boxctl-plugin-qemu")
	if err := configure(t, vmm, ""); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	h := []byte(`{"qmp":"` + sock + `","run_dir":"` + dir + `","qemu_pid_file":"` + filepath.Join(dir, "none") + `"}`)
	req := sdk.VM{Handle: h, PID: cmd.Process.Pid}
	status := func() string {
		raw, err := qmp.Run(ctx, sock, "query-status", nil)
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	if err := vmm.Pause(ctx, req); err != nil {
		t.Fatal(err)
	}
	if s := status(); !strings.Contains(s, `"paused"`) {
		t.Fatalf("after Pause: %s", s)
	}
	if err := vmm.Resume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if s := status(); !strings.Contains(s, `"running"`) {
		t.Fatalf("after Resume: %s", s)
	}
	m, err := vmm.Metrics(ctx, req)
	if err != nil || m.RSS == 0 {
		t.Fatalf("metrics: %v %v", m, err)
	}
	if _, err := vmm.Metrics(ctx, sdk.VM{Handle: []byte("junk")}); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("bad handle: %v", err)
	}
	if err := vmm.Stop(ctx, req, true); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU still runs after a forced Stop")
	}
	// Stop of a VM that is gone succeeds (idempotent).
	if err := vmm.Stop(ctx, req, true); err != nil {
		t.Fatalf("second stop: %v", err)
	}
}

// blockdevs returns the plan's -blockdev nodes by node name, as JSON.
func blockdevs(t *testing.T, lc launchConfig) map[string]string {
	t.Helper()
	nodes := map[string]string{}
	for i, a := range lc.Args {
		if a != "-blockdev" {
			continue
		}
		var n struct {
			Name string `json:"node-name"`
		}
		if err := json.Unmarshal([]byte(lc.Args[i+1]), &n); err != nil {
			t.Fatalf("-blockdev %s is not JSON: %v", lc.Args[i+1], err)
		}
		nodes[n.Name] = lc.Args[i+1]
	}
	return nodes
}

// fdOf returns the descriptor number a file node's /dev/fdset name refers
// to, after checking the plan adds that descriptor as an fd set.
func fdOf(t *testing.T, lc launchConfig, node string) int {
	t.Helper()
	_, after, _ := strings.Cut(node, `"/dev/fdset/`)
	var fd int
	fmt.Sscanf(after, "%d", &fd)
	found := false
	for i, a := range lc.Args {
		if a == "-add-fd" && lc.Args[i+1] == fmt.Sprintf("fd=%d,set=%d", fd, fd) {
			found = true
		}
	}
	if !found || fd < firstFD || fd-firstFD >= len(lc.FDs) {
		t.Errorf("node %s: fd %d is not an added fd set", node, fd)
	}
	return fd
}

// The uncompressed PVH kernel (vmlinux) beside the bzImage boots without the
// in-guest decompressor, so the guest directory's vmlinux wins; a configured
// kernel still overrides both.
func TestGuestFilesPreferVmlinux(t *testing.T) {
	t.Setenv("BOXCTL_GUEST_DIR", "")
	dir := t.TempDir()
	guest := filepath.Join(dir, "guest")
	if err := os.MkdirAll(guest, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(guest, name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v := &VMM{exe: filepath.Join(dir, "boxctl-plugin-qemu")}
	check := func(s settings, wantKernel string) {
		t.Helper()
		k, i, err := v.guestFiles(s)
		if err != nil {
			t.Fatal(err)
		}
		if k != wantKernel || i != filepath.Join(guest, "initramfs") {
			t.Fatalf("guestFiles(%+v) = %s, %s; want kernel %s", s, k, i, wantKernel)
		}
	}
	write("initramfs")
	if _, _, err := v.guestFiles(settings{}); !errors.Is(err, sdk.ErrInvalidState) {
		t.Fatalf("no kernel: err = %v, want ErrInvalidState", err)
	}
	write("vmlinuz")
	check(settings{}, filepath.Join(guest, "vmlinuz"))
	write("vmlinux")
	check(settings{}, filepath.Join(guest, "vmlinux"))
	check(settings{Kernel: "/etc/my-kernel"}, "/etc/my-kernel")
	if err := os.Remove(filepath.Join(guest, "vmlinuz")); err != nil {
		t.Fatal(err)
	}
	check(settings{}, filepath.Join(guest, "vmlinux"))
}

func TestPlanVirtioFSShares(t *testing.T) {
	dir := t.TempDir()
	guest := filepath.Join(dir, "guest")
	share := filepath.Join(dir, "share")
	for _, d := range []string{guest, share} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(guest, "vmlinuz"), filepath.Join(guest, "initramfs"), filepath.Join(dir, "root.ext4")} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	daemon := filepath.Join(dir, "virtiofsd")
	if err := os.WriteFile(daemon, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := sdk.VMSpec{
		BoxID: "b1", VCPUs: 1, MemoryMiB: 256, RunDir: run, KernelArgs: guestboot.Default().Args(),
		Disks:  []sdk.DiskSpec{{Path: filepath.Join(dir, "root.ext4"), Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true}},
		Shares: []sdk.ShareSpec{{Tag: "boxctl0", HostPath: share, ReadOnly: true}, {Tag: "boxctl1", HostPath: share}},
	}
	plan := func(t *testing.T, body string, spec sdk.VMSpec) (launchConfig, error) {
		t.Helper()
		vmm := serve(t, filepath.Join(dir, "boxctl-plugin-qemu"))
		if err := configure(t, vmm, body); err != nil {
			t.Fatal(err)
		}
		p, err := vmm.Plan(context.Background(), spec)
		if err != nil {
			return launchConfig{}, err
		}
		raw, err := os.ReadFile(p.Argv[2])
		if err != nil {
			t.Fatal(err)
		}
		var lc launchConfig
		if err := json.Unmarshal(raw, &lc); err != nil {
			t.Fatal(err)
		}
		return lc, nil
	}
	lc, err := plan(t, "\n  accel = \"tcg\"\n  share_transport = \"virtio-fs\"\n  virtiofsd = \""+daemon+"\"\n", spec)
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(lc.Args, " ")
	for _, want := range []string{
		"memory-backend-memfd,id=mem,size=256M,share=on", "-numa node,memdev=mem",
		"vhost-user-fs-pci,chardev=vfs0,tag=boxctl0,queue-size=1024", "vhost-user-fs-pci,chardev=vfs1,tag=boxctl1,queue-size=1024",
		"boxctl.sharefs=virtiofs",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q: %s", want, args)
		}
	}
	if strings.Contains(args, "virtio-9p") {
		t.Errorf("virtio-fs plan has a 9p device: %s", args)
	}
	if len(lc.VirtioFS) != 2 || lc.VirtioFS[0].Binary != daemon || !lc.VirtioFS[0].ReadOnly || lc.VirtioFS[1].ReadOnly ||
		lc.VirtioFS[0].Source != share || filepath.Dir(lc.VirtioFS[0].Socket) != run {
		t.Fatalf("virtiofsd daemons %+v", lc.VirtioFS)
	}
	vhost := 0
	for _, f := range lc.FDs {
		if f.Kind == fdVhostUser {
			vhost++
		}
	}
	if vhost != 2 {
		t.Errorf("%d vhost-user descriptors, want 2: %+v", vhost, lc.FDs)
	}

	// Without shares nothing changes: no shared memory, no daemons.
	noShares := spec
	noShares.Shares = nil
	lc, err = plan(t, "\n  accel = \"tcg\"\n  share_transport = \"virtio-fs\"\n  virtiofsd = \""+daemon+"\"\n", noShares)
	if err != nil {
		t.Fatal(err)
	}
	if args := strings.Join(lc.Args, " "); strings.Contains(args, "memory-backend") || strings.Contains(args, "-numa") || strings.Contains(args, "sharefs") || len(lc.VirtioFS) != 0 {
		t.Errorf("a VM without shares got virtio-fs settings: %s %+v", args, lc.VirtioFS)
	}

	// virtio-fs asked for without a virtiofsd: a clear error, not 9p.
	if _, _, err := shareTransport(settings{ShareTransport: transportVirtioFS, Virtiofsd: filepath.Join(dir, "gone")}, false); !errors.Is(err, sdk.ErrInvalidState) {
		t.Errorf("virtio-fs without virtiofsd: %v; want ErrInvalidState", err)
	}
	if tr, _, err := shareTransport(settings{ShareTransport: transport9p, Virtiofsd: daemon}, false); err != nil || tr != transport9p {
		t.Errorf("share_transport = 9p: %q, %v", tr, err)
	}
	if tr, bin, err := shareTransport(settings{Virtiofsd: daemon}, false); err != nil || tr != transportVirtioFS || bin != daemon {
		t.Errorf("auto with virtiofsd: %q %q, %v", tr, bin, err)
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
	"github.com/boxctl/boxctl/sdk/sdktest"
	"github.com/boxctl/boxctl/test/libkrundouble"
)

// The test binary doubles as the plugin binary: run by StartPlugin it
// serves the plugin, run from a plan it is the launcher.
func TestMain(m *testing.M) {
	hs := sdk.Handshake()
	if os.Getenv(hs.MagicCookieKey) == hs.MagicCookieValue || (len(os.Args) == 3 && os.Args[1] == "launch") {
		main()
		return
	}
	os.Exit(m.Run())
}

// fixture is a libkrun test double with its stand-in guest and a fake
// guest kernel and initramfs (the double only checks that they are
// readable files).
type fixture struct {
	dir, lib, guest, kernel, initrd string
}

func newFixture(t *testing.T, omit ...string) fixture {
	t.Helper()
	dir := t.TempDir()
	f := fixture{dir: dir, lib: libkrundouble.Build(t, dir, omit...), guest: libkrundouble.BuildGuest(t, dir),
		kernel: filepath.Join(dir, "vmlinux"), initrd: filepath.Join(dir, "initramfs")}
	for _, p := range []string{f.kernel, f.initrd} {
		if err := os.WriteFile(p, []byte("not a kernel: the libkrun double runs no VM\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// body is the plugin's config block for the double.
func (f fixture) body(extra string) string {
	return fmt.Sprintf("library = %q\nkernel = %q\ninitrd = %q\n%s", f.lib, f.kernel, f.initrd, extra)
}

func startPlugin(t *testing.T, body string) sdk.VMMClient {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	vmm := sdktest.StartPlugin(t, exe).VMM
	if err := vmm.Configure(context.Background(), &sdk.Config{Filename: "t.hcl", Body: []byte(body), BodyStart: hcl.InitialPos}); err != nil {
		t.Fatal(err)
	}
	return vmm
}

// TestConformance runs the VMM suite against the plugin with the libkrun
// double: the launcher loads the double, which runs the stand-in guest
// serving the agent on the vsock-mapped socket.
func TestConformance(t *testing.T) {
	f := newFixture(t)
	t.Setenv(libkrundouble.EnvGuest, f.guest)
	t.Setenv(libkrundouble.EnvLog, filepath.Join(f.dir, "calls.jsonl"))
	body := f.body(`pass_env = ["` + strings.Join(libkrundouble.EnvNames(), `", "`) + `"]` + "\n")
	newVMM := func(t *testing.T) sdk.VMM { return startPlugin(t, body) }
	sdktest.VMMConformance(t, newVMM, sdktest.WithReconnect(newVMM), sdktest.WithGuest(nil), sdktest.WithBootTimeout(time.Minute))
}

// box is a planned VM and what it was planned from.
type box struct {
	spec sdk.VMSpec
	plan sdk.LaunchPlan
	log  string // the double's call log
}

// planBox plans a box like the core's: the image's raw root read-only, a
// qcow2 writable disk over a raw base, user networking with a published
// port.
func planBox(t *testing.T, vmm sdk.VMM, _ fixture, mutate func(*sdk.VMSpec)) box {
	t.Helper()
	spec, log := makeSpec(t, mutate)
	plan, err := vmm.Plan(context.Background(), spec)
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	return box{spec: spec, plan: plan, log: log}
}

// makeSpec makes the disks and run directory of a box's spec, and names
// the double's call log next to them.
func makeSpec(t *testing.T, mutate func(*sdk.VMSpec)) (sdk.VMSpec, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "krun")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root, base, top, run := filepath.Join(dir, "root.img"), filepath.Join(dir, "base.raw"), filepath.Join(dir, "disk.qcow2"), filepath.Join(dir, "run")
	for _, p := range []string{root, base} {
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := sdk.VMSpec{BoxID: "krunbox", VCPUs: 2, MemoryMiB: 512, RunDir: run,
		Disks: []sdk.DiskSpec{
			{Path: root, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
			{Path: top, Format: "qcow2", Role: sdk.DiskRoleWritable, BackingChain: []sdk.ChainFile{{Path: base, Format: "raw"}}},
		},
		Network: sdk.NetworkSpec{Mode: sdk.NetworkUser, Ports: []sdk.PortForward{{HostPort: freePort(t), GuestPort: 80}}},
	}
	if mutate != nil {
		mutate(&spec)
	}
	c := guestboot.Default()
	c.BoxID = spec.BoxID
	if spec.Network.Mode == sdk.NetworkUser {
		c.UserNetwork()
	}
	spec.KernelArgs = c.Args()
	return spec, filepath.Join(dir, "calls.jsonl")
}

// freePort is a tcp port nothing listens on now.
func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// vm is a running launcher.
type vm struct {
	cmd    *exec.Cmd
	stderr *strings.Builder
	done   chan struct{}
	err    error
}

// launch starts the plan's process as a box monitor does, with the
// double's settings added to its environment.
func launch(t *testing.T, b box, f fixture, env ...string) *vm {
	t.Helper()
	cmd := exec.Command(b.plan.Argv[0], b.plan.Argv[1:]...)
	cmd.Env = append(append(append([]string{}, b.plan.Env...), libkrundouble.EnvGuest+"="+f.guest, libkrundouble.EnvLog+"="+b.log), env...)
	cmd.Dir = b.plan.Dir
	v := &vm{cmd: cmd, stderr: &strings.Builder{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = v.stderr, v.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.err = cmd.Wait(); close(v.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-v.done
	})
	return v
}

func (v *vm) ref(b box) sdk.VM { return sdk.VM{Handle: b.plan.Handle, PID: v.cmd.Process.Pid} }

// wait returns the launcher's exit code.
func (v *vm) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-v.done:
	case <-time.After(d):
		t.Fatalf("the launcher still runs after %s; its output: %s", d, v.stderr)
	}
	var ee *exec.ExitError
	switch {
	case v.err == nil:
		return 0
	case errors.As(v.err, &ee):
		if ws := ee.Sys().(syscall.WaitStatus); ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	t.Fatal(v.err)
	return -1
}

func agentUp(t *testing.T, b box, v *vm) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if err := sdktest.AgentReady(ctx, b.plan.AgentSocket); err == nil {
			return
		}
		select {
		case <-v.done:
			t.Fatalf("the launcher exited before the agent answered: %v: %s", v.err, v.stderr)
		case <-ctx.Done():
			t.Fatalf("the agent on %s never answered: %s", b.plan.AgentSocket, v.stderr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func calls(t *testing.T, b box) []libkrundouble.Call {
	t.Helper()
	cs, err := libkrundouble.ReadCalls(b.log)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func console(t *testing.T, b box) string {
	t.Helper()
	out, _ := os.ReadFile(b.plan.ConsoleLog)
	return string(out)
}

// TestCalls checks every libkrun call the launcher makes and its
// arguments, that the agent answers on the vsock-mapped socket, and that a
// graceful stop goes through the shutdown eventfd and ends the launcher
// with the guest's code 0.
func TestCalls(t *testing.T) {
	f := newFixture(t)
	vmm := startPlugin(t, f.body(`kernel_args = ["boxctl.debug"]`+"\n"))
	b := planBox(t, vmm, f, nil)
	v := launch(t, b, f)
	agentUp(t, b, v)

	var names []string
	cs := calls(t, b)
	for _, c := range cs {
		names = append(names, c.Name())
	}
	want := []string{"krun_create_ctx", "krun_set_vm_config", "krun_add_disk2", "krun_add_disk2", "krun_set_kernel",
		"krun_add_net_unixstream", "krun_disable_implicit_vsock", "krun_add_vsock", "krun_add_vsock_port2",
		"krun_set_console_output", "krun_get_shutdown_eventfd", "krun_start_enter"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("calls:\n  %s\nwant\n  %s", strings.Join(names, " "), strings.Join(want, " "))
	}
	arg := func(i int, key string) string { return fmt.Sprint(cs[i][key]) }
	expect := func(i int, key, want string) {
		t.Helper()
		if got := arg(i, key); got != want {
			t.Errorf("%s %s = %s, want %s", cs[i].Name(), key, got, want)
		}
	}
	expect(1, "num_vcpus", "2")
	expect(1, "ram_mib", "512")
	expect(2, "block_id", "vda")
	expect(2, "disk_path", b.spec.Disks[0].Path)
	expect(2, "disk_format", "0")
	expect(2, "read_only", "true")
	expect(3, "block_id", "vdb")
	expect(3, "disk_path", b.spec.Disks[1].Path)
	expect(3, "disk_format", "1")
	expect(3, "read_only", "false")
	expect(4, "kernel_path", f.kernel)
	expect(4, "kernel_format", "1") // ELF
	expect(4, "initramfs", f.initrd)
	cmdline := arg(4, "cmdline")
	for _, a := range append([]string{"console=hvc0", "boxctl.debug"}, b.spec.KernelArgs...) {
		if !strings.Contains(" "+cmdline+" ", " "+a+" ") {
			t.Errorf("the kernel command line %q lacks %q", cmdline, a)
		}
	}
	// The user-mode network: an open socket, no path, no offloads.
	expect(5, "c_path", "<nil>")
	expect(5, "c_mac", "52:54:00:12:34:56")
	expect(5, "features", "0")
	if fd, _ := cs[5]["fd"].(float64); fd < 3 {
		t.Errorf("krun_add_net_unixstream fd %v, want an open socket", cs[5]["fd"])
	}
	expect(7, "tsi_features", "0") // the network is the NIC's, not TSI
	expect(8, "port", strconv.Itoa(guestboot.VsockPort))
	expect(8, "filepath", b.plan.AgentSocket)
	expect(8, "listen", "true")
	expect(9, "filepath", b.plan.ConsoleLog)
	// The published port is bound by the launcher's network.
	hostPort := b.spec.Network.Ports[0].HostPort
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", hostPort)); err != nil {
		t.Errorf("the published port %d: %v", hostPort, err)
	} else {
		c.Close()
	}
	for i, c := range cs[1:] {
		if c["ctx"] != cs[len(cs)-1]["ctx"] {
			t.Errorf("call %d (%s) on context %v, start on %v", i+1, c.Name(), c["ctx"], cs[len(cs)-1]["ctx"])
		}
	}

	// The guest's link reaches the launcher's user-mode network.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(console(t, b), "network: 10.0.2.2 is at 52:55:0a:00:02:02"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no ARP answer from the user-mode network's gateway; console:\n%s", console(t, b))
		}
	}
	if m, err := vmm.Metrics(context.Background(), v.ref(b)); err != nil || m.RSS == 0 {
		t.Errorf("Metrics: %+v, %v", m, err)
	}
	if err := vmm.Stop(context.Background(), v.ref(b), false); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if code := v.wait(t, 10*time.Second); code != 0 {
		t.Errorf("launcher exit code %d after a graceful stop, want 0: %s", code, v.stderr)
	}
	if c := console(t, b); !strings.Contains(c, "powering off on the shutdown eventfd") {
		t.Errorf("console: %s; want the guest powered off through the shutdown eventfd", c)
	}
}

// TestNoNetwork: a box without network gets a vsock device without TSI
// and an empty port map (nothing published, rather than everything).
func TestNoNetwork(t *testing.T) {
	f := newFixture(t)
	vmm := startPlugin(t, f.body(""))
	b := planBox(t, vmm, f, func(s *sdk.VMSpec) { s.Network = sdk.NetworkSpec{} })
	v := launch(t, b, f)
	agentUp(t, b, v)
	for _, c := range calls(t, b) {
		switch c.Name() {
		case "krun_add_vsock":
			if fmt.Sprint(c["tsi_features"]) != "0" {
				t.Errorf("krun_add_vsock tsi_features %v, want 0 (no network)", c["tsi_features"])
			}
		case "krun_set_port_map":
			if fmt.Sprint(c["port_map"]) != "[]" {
				t.Errorf("krun_set_port_map %v, want an empty map", c["port_map"])
			}
		}
	}
}

// TestCallErrors makes each libkrun call fail with an errno: the launcher
// exits without a VM and says which call failed with what.
func TestCallErrors(t *testing.T) {
	f := newFixture(t)
	vmm := startPlugin(t, f.body(""))
	noNetwork := func(s *sdk.VMSpec) { s.Network = sdk.NetworkSpec{} }
	for _, c := range []struct {
		call   string
		errno  syscall.Errno
		mutate func(*sdk.VMSpec)
	}{
		{"krun_create_ctx", syscall.ENOMEM, nil}, {"krun_set_vm_config", syscall.EINVAL, nil}, {"krun_add_disk2", syscall.ENOENT, nil},
		{"krun_set_kernel", syscall.EINVAL, nil}, {"krun_add_net_unixstream", syscall.EINVAL, nil},
		{"krun_disable_implicit_vsock", syscall.EBUSY, nil}, {"krun_add_vsock", syscall.EEXIST, nil},
		{"krun_set_port_map", syscall.ENOTSUP, noNetwork}, {"krun_add_vsock_port2", syscall.EADDRINUSE, nil},
		{"krun_set_console_output", syscall.EACCES, nil}, {"krun_start_enter", syscall.EINVAL, nil},
	} {
		t.Run(c.call, func(t *testing.T) {
			b := planBox(t, vmm, f, c.mutate)
			v := launch(t, b, f, fmt.Sprintf("%s=%s=%d", libkrundouble.EnvFail, c.call, c.errno))
			if code := v.wait(t, 10*time.Second); code != 126 {
				t.Errorf("exit code %d, want 126: %s", code, v.stderr)
			}
			msg := v.stderr.String()
			if !strings.Contains(msg, c.call+" returned -") || !strings.Contains(msg, c.errno.Error()) {
				t.Errorf("launcher output %q: want it to name %s and %q", msg, c.call, c.errno.Error())
			}
		})
	}
}

// TestNoShutdownEventfd: a libkrun without a shutdown eventfd (Linux builds
// other than libkrun-efi) is stopped gracefully through the agent.
func TestNoShutdownEventfd(t *testing.T) {
	f := newFixture(t)
	vmm := startPlugin(t, f.body(""))
	b := planBox(t, vmm, f, nil)
	v := launch(t, b, f, libkrundouble.EnvFail+"=krun_get_shutdown_eventfd=22")
	agentUp(t, b, v)
	if err := vmm.Stop(context.Background(), v.ref(b), false); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if code := v.wait(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d, want 0: %s", code, v.stderr)
	}
	if c := console(t, b); !strings.Contains(c, "powering off on the agent's shutdown") {
		t.Errorf("console: %s; want a power-off through the agent", c)
	}
}

// TestForceStop kills the launcher; the guest goes with it.
func TestForceStop(t *testing.T) {
	f := newFixture(t)
	vmm := startPlugin(t, f.body(""))
	b := planBox(t, vmm, f, nil)
	v := launch(t, b, f)
	agentUp(t, b, v)
	if err := vmm.Stop(context.Background(), v.ref(b), true); err != nil {
		t.Fatalf("Stop(force): %v", err)
	}
	if code := v.wait(t, 10*time.Second); code != 128+int(syscall.SIGKILL) {
		t.Errorf("exit code %d, want %d (SIGKILL)", code, 128+int(syscall.SIGKILL))
	}
	// The guest died with the launcher: nothing listens on the socket.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("unix", b.plan.AgentSocket)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the stand-in guest still answers after the launcher was killed")
		}
	}
	for _, force := range []bool{false, true} {
		if err := vmm.Stop(context.Background(), v.ref(b), force); err != nil {
			t.Errorf("Stop(force=%v) of a gone VM: %v", force, err)
		}
	}
}

// TestExitCodes: the guest's exit code is the launcher's.
func TestExitCodes(t *testing.T) {
	f := newFixture(t)
	vmm := startPlugin(t, f.body(""))
	for _, code := range []int{0, 1, 7} {
		b := planBox(t, vmm, f, nil)
		v := launch(t, b, f, libkrundouble.EnvGuestExitAfter+"=200ms", libkrundouble.EnvGuestExitCode+"="+strconv.Itoa(code))
		if got := v.wait(t, 10*time.Second); got != code {
			t.Errorf("launcher exit code %d, want the guest's %d: %s", got, code, v.stderr)
		}
	}
	b := planBox(t, vmm, f, nil)
	v := launch(t, b, f, libkrundouble.EnvGuestExitAfter+"=100ms", libkrundouble.EnvExit+"=42")
	if got := v.wait(t, 10*time.Second); got != 42 {
		t.Errorf("launcher exit code %d, want the VMM's 42", got)
	}
}

// TestAgentRuns: the core's exec path works through the mapped socket.
func TestAgentRuns(t *testing.T) {
	f := newFixture(t)
	vmm := startPlugin(t, f.body(""))
	b := planBox(t, vmm, f, nil)
	v := launch(t, b, f)
	agentUp(t, b, v)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := agentclient.Dial(ctx, b.plan.AgentSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info, err := c.Ping(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.BoxID != "krunbox" {
		t.Errorf("Ping box ID %q, want the one from the kernel command line", info.BoxID)
	}
}

// TestMissingSymbol: a library lacking a call boxctl needs is refused at
// Plan, naming the symbol and the release that added it.
func TestMissingSymbol(t *testing.T) {
	for _, c := range []struct {
		omit, since string
		network     sdk.NetworkMode
	}{
		{"krun_add_disk2", "1.10.0", sdk.NetworkUser},
		{"krun_set_kernel", "1.11.0", sdk.NetworkUser},
		{"krun_get_shutdown_eventfd", "1.8.0", sdk.NetworkUser},
		{"krun_add_vsock", "1.17.0", sdk.NetworkNone},
	} {
		t.Run(c.omit, func(t *testing.T) {
			f := newFixture(t, c.omit)
			vmm := startPlugin(t, f.body(""))
			dir := t.TempDir()
			img := filepath.Join(dir, "root.img")
			if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
				t.Fatal(err)
			}
			spec := sdk.VMSpec{VCPUs: 1, MemoryMiB: 256, RunDir: dir, Network: sdk.NetworkSpec{Mode: c.network},
				Disks: []sdk.DiskSpec{{Path: img, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true}}}
			_, err := vmm.Plan(context.Background(), spec)
			if !errors.Is(err, sdk.ErrInvalidState) || !strings.Contains(err.Error(), c.omit) || !strings.Contains(err.Error(), c.since) {
				t.Fatalf("Plan with a libkrun lacking %s: %v; want ErrInvalidState naming it and %s", c.omit, err, c.since)
			}
		})
	}
	// The same library runs a box with network: the isolation calls are
	// only needed without.
	f := newFixture(t, "krun_add_vsock")
	vmm := startPlugin(t, f.body(""))
	planBox(t, vmm, f, nil)
}

// TestLibraryErrors: a missing library, a 2.x one, and something that is
// not libkrun, each refused with what to do.
func TestLibraryErrors(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	exe, _ := os.Executable()
	cfg := func(body string) error {
		vmm := sdktest.StartPlugin(t, exe).VMM
		return vmm.Configure(ctx, &sdk.Config{Filename: "t.hcl", Body: []byte(body), BodyStart: hcl.InitialPos})
	}
	if err := cfg(`library = "/nonexistent/libkrun.so.1"`); err == nil || !strings.Contains(err.Error(), "libkrunfw") {
		t.Errorf("Configure with a missing library: %v; want an error saying what to install", err)
	}
	plan := func(body string) error {
		vmm := startPlugin(t, body)
		spec := sdk.VMSpec{VCPUs: 1, MemoryMiB: 256, RunDir: t.TempDir()}
		_, err := vmm.Plan(ctx, spec)
		return err
	}
	// Nothing configured: the default search, which finds no libkrun on a
	// machine without one (LD_LIBRARY_PATH cleared so only system places count).
	if _, err := os.Stat("/usr/lib64/libkrun.so.1"); err != nil {
		t.Setenv("LD_LIBRARY_PATH", "")
		err := plan(fmt.Sprintf("kernel = %q\ninitrd = %q\n", f.kernel, f.initrd))
		if !errors.Is(err, sdk.ErrInvalidState) || !strings.Contains(err.Error(), "libkrun.so.1") || !strings.Contains(err.Error(), "/usr/lib64") || !strings.Contains(err.Error(), "libkrunfw") {
			t.Errorf("Plan without libkrun: %v; want where it looked and what to install", err)
		}
	}
	v2 := filepath.Join(f.dir, "libkrun.so.2")
	if err := os.Link(f.lib, v2); err != nil {
		t.Fatal(err)
	}
	if err := plan(fmt.Sprintf("library = %q\nkernel = %q\ninitrd = %q\n", v2, f.kernel, f.initrd)); err == nil || !strings.Contains(err.Error(), "2.x") || !strings.Contains(err.Error(), "1.x") {
		t.Errorf("Plan with libkrun 2.x: %v; want it refused as 2.x", err)
	}
	notKrun := filepath.Join(f.dir, "libnotkrun.so")
	src := filepath.Join(f.dir, "notkrun.c")
	if err := os.WriteFile(src, []byte("int not_krun(void) { return 0; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cc", "-shared", "-fPIC", "-o", notKrun, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v: %s", err, out)
	}
	if err := plan(fmt.Sprintf("library = %q\nkernel = %q\ninitrd = %q\n", notKrun, f.kernel, f.initrd)); err == nil || !strings.Contains(err.Error(), "not libkrun") {
		t.Errorf("Plan with a library that is not libkrun: %v", err)
	}
}

// TestPlanRefuses: what libkrun cannot be given is refused before any VM.
func TestPlanRefuses(t *testing.T) {
	f := newFixture(t)
	vmm := startPlugin(t, f.body(""))
	for _, c := range []struct {
		name   string
		mutate func(*sdk.VMSpec)
		want   string
	}{
		{"TooManyDisks", func(s *sdk.VMSpec) {
			for len(s.Disks) < 15 {
				s.Disks = append(s.Disks, sdk.DiskSpec{Path: s.Disks[0].Path, Format: "raw", Role: sdk.DiskRoleData, ReadOnly: true})
			}
		}, "at most 14 disks"},
		{"ChainNotInSpec", func(s *sdk.VMSpec) { s.Disks[1].BackingChain = nil }, "does not list"},
		{"ChainElsewhere", func(s *sdk.VMSpec) {
			other := filepath.Join(filepath.Dir(s.Disks[0].Path), "other.raw")
			_ = os.WriteFile(other, make([]byte, 4096), 0o644)
			s.Disks[1].BackingChain = []sdk.ChainFile{{Path: other, Format: "raw"}}
		}, "must be the chain's"},
		{"SCTPPort", func(s *sdk.VMSpec) { s.Network.Ports[0].Protocol = "sctp" }, "want tcp or udp"},
		{"PortWithoutNetwork", func(s *sdk.VMSpec) { s.Network.Mode = sdk.NetworkNone }, "needs a network"},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec, _ := makeSpec(t, c.mutate)
			_, err := vmm.Plan(context.Background(), spec)
			if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Plan: %v; want ErrInvalidArgument saying %q", err, c.want)
			}
		})
	}
}

// TestSigtermIsGraceful: SIGTERM to the launcher (what a box monitor's
// stop sends) asks the guest to shut down rather than killing it.
func TestSigtermIsGraceful(t *testing.T) {
	f := newFixture(t)
	vmm := startPlugin(t, f.body(""))
	b := planBox(t, vmm, f, nil)
	v := launch(t, b, f)
	agentUp(t, b, v)
	if err := v.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := v.wait(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want the guest's 0: %s", code, v.stderr)
	}
	if c := console(t, b); !strings.Contains(c, "powering off on the shutdown eventfd") {
		t.Errorf("console: %s; want a power-off through the shutdown eventfd", c)
	}
}

// TestTSI: a library without krun_add_net_unixstream (before 1.15) gets
// libkrun's TSI network: the vsock device carries the guest's inet
// sockets and the published ports go to krun_set_port_map; what TSI
// cannot publish is refused.
func TestTSI(t *testing.T) {
	f := newFixture(t, "krun_add_net_unixstream")
	vmm := startPlugin(t, f.body(""))
	b := planBox(t, vmm, f, nil)
	v := launch(t, b, f)
	agentUp(t, b, v)
	seen := map[string]libkrundouble.Call{}
	for _, c := range calls(t, b) {
		seen[c.Name()] = c
	}
	if _, ok := seen["krun_add_net_unixstream"]; ok {
		t.Error("krun_add_net_unixstream called on a library without it")
	}
	if got := fmt.Sprint(seen["krun_add_vsock"]["tsi_features"]); got != "1" {
		t.Errorf("krun_add_vsock tsi_features %s, want 1 (KRUN_TSI_HIJACK_INET)", got)
	}
	p := b.spec.Network.Ports[0]
	if got, want := fmt.Sprint(seen["krun_set_port_map"]["port_map"]), fmt.Sprintf("[%d:%d]", p.HostPort, p.GuestPort); got != want {
		t.Errorf("krun_set_port_map %s, want %s", got, want)
	}
	for _, c := range []struct {
		name   string
		mutate func(*sdk.VMSpec)
		want   string
	}{
		{"UDPPort", func(s *sdk.VMSpec) { s.Network.Ports[0].Protocol = "udp" }, "tcp ports only"},
		{"HostIP", func(s *sdk.VMSpec) { s.Network.Ports[0].HostIP = "127.0.0.1" }, "every host address"},
	} {
		spec, _ := makeSpec(t, c.mutate)
		_, err := vmm.Plan(context.Background(), spec)
		if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "krun_add_net_unixstream") {
			t.Errorf("%s: Plan: %v; want ErrInvalidArgument saying %q and why the network is TSI", c.name, err, c.want)
		}
	}
	// TSI makes the guest's sockets inside libkrun, where no allow-list
	// can be applied: such a box is refused, not run unchecked.
	spec, _ := makeSpec(t, func(s *sdk.VMSpec) {
		s.Network.Allow = []sdk.NetworkAllow{{Prefix: netip.MustParsePrefix("192.0.2.0/24")}}
	})
	if _, err := vmm.Plan(context.Background(), spec); !errors.Is(err, sdk.ErrUnsupported) || !strings.Contains(err.Error(), "allow-list") {
		t.Errorf("Plan with an allow-list on TSI: %v; want ErrUnsupported about the allow-list", err)
	}
}

// TestAllowList: the allow-list reaches the launcher's user-mode network;
// without a network, or with a rule that does not hold, Plan refuses it.
func TestAllowList(t *testing.T) {
	f := newFixture(t)
	vmm := startPlugin(t, f.body(""))
	allow := []sdk.NetworkAllow{{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Port: 443}, {Host: "example.com"}}
	b := planBox(t, vmm, f, func(s *sdk.VMSpec) { s.Network.Allow = allow })
	raw, err := os.ReadFile(b.plan.Argv[len(b.plan.Argv)-1])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"Prefix":"192.0.2.0/24"`, `"Host":"example.com"`, `"stats_file":`} {
		if !strings.Contains(strings.ReplaceAll(string(raw), " ", ""), want) {
			t.Errorf("launch config lacks %s:\n%s", want, raw)
		}
	}
	for _, mutate := range []func(*sdk.VMSpec){
		func(s *sdk.VMSpec) { s.Network = sdk.NetworkSpec{Mode: sdk.NetworkNone, Allow: allow} },
		func(s *sdk.VMSpec) { s.Network.Allow = []sdk.NetworkAllow{{Host: "not a name"}} },
	} {
		spec, _ := makeSpec(t, mutate)
		if _, err := vmm.Plan(context.Background(), spec); !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), "spec.Network.Allow") {
			t.Errorf("Plan with network %+v: %v; want ErrInvalidArgument naming spec.Network.Allow", spec.Network, err)
		}
	}
}

// TestFoundByTheLoadersSearch: without library, libkrun.so.1 is found
// through the dynamic loader's own search (LD_LIBRARY_PATH here), and the
// launcher finds it the same way.
func TestFoundByTheLoadersSearch(t *testing.T) {
	f := newFixture(t)
	t.Setenv("LD_LIBRARY_PATH", f.dir)
	vmm := startPlugin(t, fmt.Sprintf("kernel = %q\ninitrd = %q\n", f.kernel, f.initrd))
	b := planBox(t, vmm, f, nil)
	v := launch(t, b, f)
	agentUp(t, b, v)
	if err := vmm.Stop(context.Background(), v.ref(b), false); err != nil {
		t.Fatal(err)
	}
	if code := v.wait(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d: %s", code, v.stderr)
	}
}

// TestShares: host directory shares become libkrun virtio-fs devices, a
// read-only one through krun_add_virtiofs3 with read_only (libkrun's
// server refuses writes on the host side), and the guest is told they are
// virtio-fs. A libkrun without krun_add_virtiofs3 gets read-write shares
// only: a read-only one is refused rather than served writable.
func TestShares(t *testing.T) {
	share := t.TempDir()
	shares := func(s *sdk.VMSpec) {
		s.Shares = []sdk.ShareSpec{{Tag: "boxctl0", HostPath: share}, {Tag: "boxctl1", HostPath: share, ReadOnly: true}}
	}
	t.Run("calls", func(t *testing.T) {
		f := newFixture(t)
		vmm := startPlugin(t, f.body(""))
		b := planBox(t, vmm, f, shares)
		v := launch(t, b, f)
		agentUp(t, b, v)
		var got []string
		for _, c := range calls(t, b) {
			switch c.Name() {
			case "krun_add_virtiofs", "krun_add_virtiofs3":
				got = append(got, fmt.Sprintf("%s %v %v %v %v", c.Name(), c["c_tag"], c["c_path"], c["shm_size"], c["read_only"]))
			case "krun_set_kernel":
				if cl := fmt.Sprint(c["cmdline"]); !strings.Contains(" "+cl+" ", " boxctl.sharefs=virtiofs ") {
					t.Errorf("the kernel command line %q does not say the shares are virtio-fs", cl)
				}
			}
		}
		want := []string{
			"krun_add_virtiofs boxctl0 " + share + " <nil> <nil>",
			"krun_add_virtiofs3 boxctl1 " + share + " 0 true",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("virtio-fs calls:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
	t.Run("no read-only shares without krun_add_virtiofs3", func(t *testing.T) {
		f := newFixture(t, "krun_add_virtiofs3")
		vmm := startPlugin(t, f.body(""))
		spec, _ := makeSpec(t, shares)
		_, err := vmm.Plan(context.Background(), spec)
		if !errors.Is(err, sdk.ErrUnsupported) || !strings.Contains(err.Error(), "krun_add_virtiofs3") || !strings.Contains(err.Error(), "1.18.0") {
			t.Fatalf("Plan with a read-only share on a libkrun without krun_add_virtiofs3: %v; want ErrUnsupported naming it and 1.18.0", err)
		}
		spec.Shares = spec.Shares[:1]
		if _, err := vmm.Plan(context.Background(), spec); err != nil {
			t.Fatalf("Plan with a read-write share: %v", err)
		}
	})
	t.Run("no shares without krun_add_virtiofs", func(t *testing.T) {
		f := newFixture(t, "krun_add_virtiofs")
		vmm := startPlugin(t, f.body(""))
		spec, _ := makeSpec(t, shares)
		if _, err := vmm.Plan(context.Background(), spec); !errors.Is(err, sdk.ErrUnsupported) || !strings.Contains(err.Error(), "krun_add_virtiofs") {
			t.Fatalf("Plan with shares on a libkrun without krun_add_virtiofs: %v; want ErrUnsupported", err)
		}
	})
}

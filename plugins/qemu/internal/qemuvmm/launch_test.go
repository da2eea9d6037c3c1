package qemuvmm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/guest/vmtest"
	"github.com/boxctl/boxctl/plugins/qemu/internal/qmp"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// The test binary doubles as the launcher: plans name it as the plugin
// binary, and the box monitor's part (running plan.argv) is done by the
// tests.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "launch" {
		os.Exit(Launch(os.Args[2], os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == virtiofsdExecCommand {
		os.Exit(VirtiofsdExec(os.Args[2:], os.Stderr))
	}
	os.Exit(m.Run())
}

// launched is a VM started from a plan by the real launcher.
type launched struct {
	t      *testing.T
	vmm    sdk.VMMClient
	plan   sdk.LaunchPlan
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// guestFilesForTest returns build/guest's kernel and initramfs.
func guestFilesForTest(t *testing.T) (kernel, initrd string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 not found: install qemu-system-x86 (scripts/install-deps.sh)")
	}
	root, err := vmtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	kernel, initrd = filepath.Join(root, "build", "guest", "vmlinuz"), filepath.Join(root, "build", "guest", "initramfs")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("guest %v: run `make guest` to build the guest kernel and initramfs", err)
		}
	}
	return kernel, initrd
}

// launch plans spec with the plugin and runs the plan like a box monitor.
func launch(t *testing.T, spec sdk.VMSpec) *launched {
	t.Helper()
	kernel, initrd := guestFilesForTest(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	vmm := serve(t, exe)
	body := fmt.Sprintf("\n  accel = \"tcg\"\n  kernel = %q\n  initrd = %q\n", kernel, initrd)
	if err := vmm.Configure(context.Background(), &sdk.Config{Filename: "t.hcl", Body: []byte(body), BodyStart: hcl.InitialPos}); err != nil {
		t.Fatal(err)
	}
	plan, err := vmm.Plan(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	l := &launched{t: t, vmm: vmm, plan: plan, stderr: &syncBuffer{}, done: make(chan struct{})}
	l.cmd = exec.Command(plan.Argv[0], plan.Argv[1:]...)
	l.cmd.Env, l.cmd.Dir = plan.Env, plan.Dir
	l.cmd.Stdout, l.cmd.Stderr = l.stderr, l.stderr
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = l.cmd.Wait(); close(l.done) }()
	t.Cleanup(l.kill)
	return l
}

func (l *launched) kill() {
	_ = l.cmd.Process.Kill()
	<-l.done
}

func (l *launched) control() sdk.VM {
	return sdk.VM{Handle: l.plan.Handle, PID: l.cmd.Process.Pid}
}

func (l *launched) diag() string {
	console, _ := os.ReadFile(l.plan.ConsoleLog)
	return fmt.Sprintf("\nlauncher: %s\nconsole tail: %s", l.stderr.String(), tail(string(console), 1500))
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// qemuPID returns QEMU's PID, as the kernel says: the launcher's child.
func (l *launched) qemuPID() int {
	l.t.Helper()
	pid := l.cmd.Process.Pid
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, f := range tasks {
			b, _ := os.ReadFile(f)
			if fields := strings.Fields(string(b)); len(fields) > 0 {
				var child int
				fmt.Sscanf(fields[0], "%d", &child)
				return child
			}
		}
	}
	l.t.Fatalf("the launcher has no child process%s", l.diag())
	return 0
}

// agent waits for the guest agent and returns a client.
func (l *launched) agent(ctx context.Context) *agentclient.Client {
	l.t.Helper()
	c, err := agentclient.Dial(ctx, l.plan.AgentSocket)
	if err != nil {
		l.t.Fatalf("dial agent: %v%s", err, l.diag())
	}
	l.t.Cleanup(func() { c.Close() })
	wctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	if _, err := c.WaitReady(wctx); err != nil {
		l.t.Fatalf("guest agent not ready: %v%s", err, l.diag())
	}
	return c
}

// waitState waits until the state file says state and returns it.
func (l *launched) waitState(state string, within time.Duration) vmState {
	l.t.Helper()
	var last vmState
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, err := os.ReadFile(l.plan.StateFile)
		if err == nil && json.Unmarshal(b, &last) == nil && last.State == state {
			return last
		}
	}
	l.t.Fatalf("the state file never said %q (last: %+v)%s", state, last, l.diag())
	return last
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

func runTool(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// blankExt4 writes a raw ext4 filesystem of sizeMB at path.
func blankExt4(t *testing.T, path string, sizeMB int) {
	t.Helper()
	runTool(t, "truncate", "-s", fmt.Sprintf("%dM", sizeMB), path)
	runTool(t, "mkfs.ext4", "-q", "-F", "-L", "data", path)
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bxq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// TestConfinedQEMUOpensOnlyTheExplicitChain starts a VM whose writable
// qcow2 names a root-only file outside the store as its backing file,
// while the plan's chain names the real base: QEMU opens the chain it was
// given and never the header's name, runs as the sandbox user with the
// syscall filter and no new privileges, and cannot open a root-only file
// even when asked to over QMP.
func TestConfinedQEMUOpensOnlyTheExplicitChain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the sandbox switches QEMU to another user")
	}
	ctx := context.Background()
	dir := shortDir(t)
	secretDir := shortDir(t)
	secret := filepath.Join(secretDir, "secret.raw")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("root only\n"), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	root, base, top := filepath.Join(dir, "root.ext4"), filepath.Join(dir, "base.raw"), filepath.Join(dir, "top.qcow2")
	if err := vmtest.MakeRootDisk(ctx, root); err != nil {
		t.Fatal(err)
	}
	blankExt4(t, base, 64)
	// -u: qemu-img does not open the backing file; the header just names it.
	runTool(t, "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", secret, "-F", "raw", top, "64M")
	for _, f := range []string{root, base, top} {
		if err := os.Chmod(f, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	uid := uint32(0x7ffe0000 + os.Getpid()%0x10000)
	l := launch(t, sdk.VMSpec{
		BoxID: "chain", VCPUs: 1, MemoryMiB: 256, RunDir: run,
		Network:    sdk.NetworkSpec{Mode: sdk.NetworkNone},
		Sandbox:    sdk.Sandbox{UID: uid, GID: uid},
		KernelArgs: guestboot.Default().Args(),
		Disks: []sdk.DiskSpec{
			{Path: root, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
			{Path: top, Format: "qcow2", Role: sdk.DiskRoleWritable, BackingChain: []sdk.ChainFile{{Path: base, Format: "raw"}}},
		},
	})
	c := l.agent(ctx)
	// The guest's writable disk is the blank ext4 of the chain's base.
	var out bytes.Buffer
	res, err := c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"sh", "-c", "echo hello > /probe && cat /probe"}}, nil, &out, &out, nil, nil)
	if err != nil || res.ExitCode != 0 || out.String() != "hello\n" {
		t.Fatalf("write to the box's disk: %v %+v %q%s", err, res, out.String(), l.diag())
	}
	l.waitState(stateRunning, time.Minute)

	pid := l.qemuPID()
	st := procStatus(t, pid)
	if uids := strings.Fields(st["Uid"]); len(uids) != 4 || uids[0] != fmt.Sprint(uid) || uids[1] != fmt.Sprint(uid) {
		t.Errorf("QEMU runs as Uid %q, want %d", st["Uid"], uid)
	}
	if st["Groups"] != "" || st["CapEff"] != "0000000000000000" || st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
		t.Errorf("QEMU is not confined: Groups %q CapEff %s NoNewPrivs %s Seccomp %s", st["Groups"], st["CapEff"], st["NoNewPrivs"], st["Seccomp"])
	}
	// QEMU holds the chain it was given and nothing named by the header.
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	held := map[string]bool{}
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil {
			held[target] = true
		}
	}
	if held[secret] || !held[base] || !held[top] || !held[root] {
		t.Errorf("QEMU's open files: secret %v, base %v, top %v, root %v: %v", held[secret], held[base], held[top], held[root], held)
	}
	raw, err := qmp.Run(ctx, filepath.Join(run, "qmp.sock"), "query-named-block-nodes", nil)
	if err != nil {
		t.Fatal(err)
	}
	// The header's name is reported as what the header says, but no node
	// is that file: vdb's backing node is the chain's base.
	var nodes []struct {
		Name        string `json:"node-name"`
		File        string `json:"file"`
		BackingFile string `json:"backing_file"`
	}
	if err := json.Unmarshal(raw, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.File == secret || n.BackingFile == secret || (n.Name == "vdb" && !strings.HasPrefix(n.BackingFile, "/dev/fdset/")) {
			t.Errorf("block node %+v: QEMU opened the header's backing file", n)
		}
	}
	// Asked to open a root-only file, the confined QEMU cannot.
	_, err = qmp.Run(ctx, filepath.Join(run, "qmp.sock"), "blockdev-add", map[string]any{"driver": "file", "node-name": "probe", "filename": secret, "read-only": true})
	if err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("blockdev-add of a root-only file: %v, want Permission denied", err)
	}
	// Metrics measure QEMU, found through the launcher's PID file.
	m, err := l.vmm.Metrics(ctx, l.control())
	if err != nil || m.RSS < 32<<20 {
		t.Errorf("metrics: %v %v", m, err)
	}
	if err := l.vmm.Stop(ctx, l.control(), true); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.done:
	case <-time.After(time.Minute):
		t.Fatalf("the launcher still runs after a forced stop%s", l.diag())
	}
	l.waitState(stateShutdown, 5*time.Second)
	for _, s := range []string{"agent.sock", "agent-serial.sock", "qmp.sock", "qemu.pid"} {
		if _, err := os.Stat(filepath.Join(run, s)); err == nil {
			t.Errorf("%s left behind", s)
		}
	}
}

// TestDiskFullPausesTheVMUntilResume fills the host filesystem under the
// box's writable disk from inside the guest: QEMU pauses the VM, the state
// file says io-error with the reason and the device; once space is freed,
// Resume continues the guest, whose write then completes.
func TestDiskFullPausesTheVMUntilResume(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a size-limited tmpfs")
	}
	ctx := context.Background()
	dir := shortDir(t)
	small := filepath.Join(dir, "small")
	if err := os.Mkdir(small, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "boxctl-test", small).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s): the disk-full test needs mount permission", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", small).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", small, err, out)
		}
	})
	root, base, disk := filepath.Join(dir, "root.ext4"), filepath.Join(dir, "base.raw"), filepath.Join(small, "disk.qcow2")
	if err := vmtest.MakeRootDisk(ctx, root); err != nil {
		t.Fatal(err)
	}
	blankExt4(t, base, 128)
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", disk)
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := sdk.VMSpec{
		BoxID: "full", VCPUs: 1, MemoryMiB: 256, RunDir: run,
		Network:    sdk.NetworkSpec{Mode: sdk.NetworkNone},
		KernelArgs: guestboot.Default().Args(),
		Disks: []sdk.DiskSpec{
			{Path: root, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
			{Path: disk, Format: "qcow2", Role: sdk.DiskRoleWritable, BackingChain: []sdk.ChainFile{{Path: base, Format: "raw"}}},
		},
	}
	if os.Geteuid() == 0 {
		uid := uint32(0x7ffd0000 + os.Getpid()%0x10000)
		spec.Sandbox = sdk.Sandbox{UID: uid, GID: uid}
	}
	l := launch(t, spec)
	c := l.agent(ctx)
	l.waitState(stateRunning, time.Minute)

	// 48 MiB into a disk whose file may grow by about 12 MiB.
	type result struct {
		res agentclient.ExitResult
		out string
		err error
	}
	wrote := make(chan result, 1)
	go func() {
		var out bytes.Buffer
		res, err := c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"dd", "if=/dev/zero", "of=/fill", "bs=1M", "count=48", "conv=fsync"}}, nil, &out, &out, nil, nil)
		wrote <- result{res, out.String(), err}
	}()
	st := l.waitState(stateIOError, 3*time.Minute)
	if st.Reason != "no space left on device" || st.Device != "vdb" {
		t.Errorf("state file: %+v, want reason \"no space left on device\" on vdb", st)
	}
	raw, err := qmp.Run(ctx, filepath.Join(run, "qmp.sock"), "query-status", nil)
	if err != nil || !strings.Contains(string(raw), `"io-error"`) {
		t.Fatalf("QEMU's status: %s %v", raw, err)
	}
	select {
	case r := <-wrote:
		t.Fatalf("the guest's write ended while the VM is paused: %+v", r)
	default:
	}

	// Free space, then resume.
	runTool(t, "mount", "-o", "remount,size=256m", small)
	if err := l.vmm.Resume(ctx, l.control()); err != nil {
		t.Fatal(err)
	}
	l.waitState(stateRunning, time.Minute)
	select {
	case r := <-wrote:
		if r.err != nil || r.res.ExitCode != 0 {
			t.Fatalf("the guest's write after resume: %+v", r)
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("the guest's write did not finish after resume%s", l.diag())
	}
	if b, _ := os.ReadFile(l.plan.StateFile); !strings.Contains(string(b), `"running"`) {
		t.Errorf("state file after the write: %s", b)
	}
	l.kill()
}

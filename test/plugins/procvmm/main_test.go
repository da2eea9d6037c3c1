package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// The test binary doubles as the plugin binary: run by StartPlugin it serves
// the plugin, run from a plan it is the "VM".
func TestMain(m *testing.M) {
	hs := sdk.Handshake()
	if os.Getenv(hs.MagicCookieKey) == hs.MagicCookieValue || (len(os.Args) > 1 && os.Args[1] == "vm") {
		main()
		return
	}
	os.Exit(m.Run())
}

func startProcVMM(t *testing.T, body string) sdk.VMM {
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

// TestConformance runs the VMM suite against the double, its agent double
// standing in for the guest.
func TestConformance(t *testing.T) {
	newVMM := func(t *testing.T) sdk.VMM { return startProcVMM(t, "") }
	sdktest.VMMConformance(t, newVMM, sdktest.WithReconnect(newVMM), sdktest.WithGuest(nil), sdktest.WithBootTimeout(time.Minute))
}

// TestVMServesTheAgent plans a box with the guest boot contract, starts the
// "VM" as a monitor would, and uses it through agentclient: the command
// runs in the scratch root, the console shows the kernel command line, and
// the agent's Shutdown powers the "VM" off.
func TestVMServesTheAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vmm := startProcVMM(t, "")
	run := filepath.Join(shortDir(t), "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(filepath.Dir(run), "root.raw")
	if err := os.WriteFile(disk, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	plan, err := vmm.Plan(ctx, sdk.VMSpec{BoxID: "b", VCPUs: 1, MemoryMiB: 128, RunDir: run,
		Disks:      []sdk.DiskSpec{{Path: disk, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true}},
		KernelArgs: []string{"boxctl.root=vda", "boxctl.hostname=b"}})
	if err != nil {
		t.Fatal(err)
	}
	vm := startPlan(t, plan)
	c, err := agentclient.Dial(ctx, plan.AgentSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if info, err := c.WaitReady(ctx); err != nil || !info.RootMounted {
		t.Fatalf("agent: %+v %v", info, err)
	}
	var out bytes.Buffer
	res, err := c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"sh", "-c", "echo hi > f && pwd"}}, nil, &out, &out, nil, nil)
	if err != nil || res.ExitCode != 0 || strings.TrimSpace(out.String()) != filepath.Join(run, "root") {
		t.Fatalf("exec: %+v %v %q", res, err, out.String())
	}
	if b, err := os.ReadFile(filepath.Join(run, "root", "f")); err != nil || string(b) != "hi\n" {
		t.Errorf("the command's file in the scratch root: %q %v", b, err)
	}
	if err := c.Shutdown(ctx, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.done:
	case <-time.After(time.Minute):
		t.Fatal("the VM still runs after the agent's Shutdown")
	}
	console, _ := os.ReadFile(plan.ConsoleLog)
	if !strings.Contains(string(console), "kernel command line: boxctl.root=vda boxctl.hostname=b") || !strings.Contains(string(console), "powering off on the agent's shutdown") {
		t.Errorf("console:\n%s", console)
	}
}

// With ignore_sigterm the "VM" ignores the agent's Shutdown as it ignores
// SIGTERM; only a forced stop ends it.
func TestIgnoreSigtermIgnoresTheAgentsShutdown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vmm := startProcVMM(t, "ignore_sigterm = true\n")
	run := filepath.Join(shortDir(t), "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	plan, err := vmm.Plan(ctx, sdk.VMSpec{BoxID: "b", VCPUs: 1, MemoryMiB: 128, RunDir: run})
	if err != nil {
		t.Fatal(err)
	}
	vm := startPlan(t, plan)
	c, err := agentclient.Dial(ctx, plan.AgentSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(ctx, 0); err != nil {
		t.Fatal(err)
	}
	ref := sdk.VM{Handle: plan.Handle, PID: vm.cmd.Process.Pid}
	if err := vmm.Stop(ctx, ref, false); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(plan.ConsoleLog)
		if strings.Contains(string(b), "ignoring the agent's shutdown") && strings.Contains(string(b), "ignoring terminated") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("console:\n%s", b)
		}
	}
	select {
	case <-vm.done:
		t.Fatal("the VM exited on a graceful stop it should ignore")
	default:
	}
	if err := vmm.Stop(ctx, ref, true); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.done:
	case <-time.After(time.Minute):
		t.Fatal("the VM still runs after a forced stop")
	}
}

// shortDir is a temporary directory whose path leaves room for socket names.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pvm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

type vmProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startPlan starts the plan's process as the box monitor does.
func startPlan(t *testing.T, plan sdk.LaunchPlan) *vmProc {
	t.Helper()
	cmd := exec.Command(plan.Argv[0], plan.Argv[1:]...)
	cmd.Env, cmd.Dir = plan.Env, plan.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with a test that times out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v := &vmProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(v.done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-v.done })
	return v
}

// TestSwitchDiskIsRecorded switches the writable disk of a paused "VM" the
// way the core's quiesce bracket does (rename, new overlay, SwitchDisk)
// and reads the switch back from RunDir/disks.json; a retry succeeds and
// records nothing; with fail_on the call fails after its checks and records
// nothing; the "VM" stopped by Pause is stopped when Pause returns.
func TestSwitchDiskIsRecorded(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img not found: install qemu-utils")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, failing := range []bool{false, true} {
		body := ""
		if failing {
			body = "fail_on = \"SwitchDisk\"\n"
		}
		vmm := startProcVMM(t, body).(sdk.VMMClient)
		dir := shortDir(t)
		run := filepath.Join(dir, "run")
		if err := os.Mkdir(run, 0o700); err != nil {
			t.Fatal(err)
		}
		root, disk, base := filepath.Join(dir, "root.raw"), filepath.Join(dir, "disk.raw"), filepath.Join(dir, "base.raw")
		for _, f := range []string{root, disk} {
			if err := os.WriteFile(f, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		plan, err := vmm.Plan(ctx, sdk.VMSpec{BoxID: "b", VCPUs: 1, MemoryMiB: 128, RunDir: run, Disks: []sdk.DiskSpec{
			{Path: root, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
			{Path: disk, Format: "raw", Role: sdk.DiskRoleWritable},
		}})
		if err != nil {
			t.Fatal(err)
		}
		vm := startPlan(t, plan)
		ref := sdk.VM{Handle: plan.Handle, PID: vm.cmd.Process.Pid}
		if err := vmm.Pause(ctx, ref); err != nil {
			t.Fatal(err)
		}
		if st := procState(t, ref.PID); st != "T" {
			t.Fatalf("the VM's state after Pause: %s, want T (stopped)", st)
		}
		if err := os.Rename(disk, base); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", disk).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v: %s", err, out)
		}
		switched := sdk.DiskSpec{Path: disk, Format: "qcow2", Role: sdk.DiskRoleWritable, BackingChain: []sdk.ChainFile{{Path: base, Format: "raw"}}}
		err = vmm.SwitchDisk(ctx, ref, 1, switched)
		b, rerr := os.ReadFile(filepath.Join(run, "disks.json"))
		if rerr != nil {
			t.Fatal(rerr)
		}
		var rec struct {
			Disks []struct {
				Path         string
				Format       string
				BackingChain []sdk.ChainFile
				Switches     int `json:"switches"`
			} `json:"disks"`
		}
		if err := json.Unmarshal(b, &rec); err != nil || len(rec.Disks) != 2 {
			t.Fatalf("disks.json: %v: %s", err, b)
		}
		got := rec.Disks[1]
		switch {
		case failing && (err == nil || !strings.Contains(err.Error(), "on purpose")):
			t.Errorf("SwitchDisk with fail_on: %v, want the failure asked for", err)
		case failing && got.Switches != 0:
			t.Errorf("a failed SwitchDisk was recorded: %s", b)
		case !failing && err != nil:
			t.Fatalf("SwitchDisk: %v", err)
		case !failing && (got.Switches != 1 || got.Format != "qcow2" || len(got.BackingChain) != 1 || got.BackingChain[0].Path != base):
			t.Errorf("disks.json after the switch: %s", b)
		}
		if !failing {
			// A retry succeeds and records nothing more.
			if err := vmm.SwitchDisk(ctx, ref, 1, switched); err != nil {
				t.Errorf("SwitchDisk again: %v", err)
			}
			if again, _ := os.ReadFile(filepath.Join(run, "disks.json")); !bytes.Equal(again, b) {
				t.Errorf("a repeated SwitchDisk changed disks.json:\n%s\n%s", b, again)
			}
		}
		if rec.Disks[0].Switches != 0 {
			t.Errorf("the image disk was recorded as switched: %s", b)
		}
		if err := vmm.Resume(ctx, ref); err != nil {
			t.Fatal(err)
		}
		// A switch of the running "VM" is refused.
		if err := vmm.SwitchDisk(ctx, ref, 1, switched); !errors.Is(err, sdk.ErrInvalidState) {
			t.Errorf("SwitchDisk of a running VM: %v, want ErrInvalidState", err)
		}
	}
}

func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
}

// TestMemorySnapshotDouble: with fail_on = "SaveState" the call fails
// after its checks and writes nothing; a restore plan of a truncated state
// is accepted (its header is intact) and its "VM" exits 1 saying why, and
// one of a good state says on its console what it was restored from.
func TestMemorySnapshotDouble(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := shortDir(t)
	spec := func(name string) sdk.VMSpec {
		run := filepath.Join(dir, name)
		if err := os.Mkdir(run, 0o700); err != nil {
			t.Fatal(err)
		}
		return sdk.VMSpec{BoxID: name, VCPUs: 1, MemoryMiB: 128, RunDir: run}
	}
	for _, failing := range []bool{true, false} {
		body := ""
		if failing {
			body = "fail_on = \"SaveState\"\n"
		}
		vmm := startProcVMM(t, body)
		m := vmm.(sdk.MemorySnapshotter)
		src := spec(fmt.Sprintf("src-%v", failing))
		plan, err := vmm.Plan(ctx, src)
		if err != nil {
			t.Fatal(err)
		}
		vm := startPlan(t, plan)
		ref := sdk.VM{Handle: plan.Handle, PID: vm.cmd.Process.Pid}
		if err := vmm.(sdk.Pauser).Pause(ctx, ref); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, fmt.Sprintf("state-%v", failing))
		saved, err := m.SaveState(ctx, ref, path)
		if failing {
			if err == nil || !strings.Contains(err.Error(), "on purpose") {
				t.Errorf("SaveState with fail_on: %v, want the failure", err)
			}
			if _, err := os.Lstat(path); err == nil {
				t.Error("a failed SaveState left a file")
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		short := path + ".short"
		if err := os.WriteFile(short, b[:len(b)-10], 0o600); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			file string
			want string
		}{{short, "cannot restore"}, {path, "restored from " + path + " (saved from box src-false)"}} {
			s := spec("r-" + filepath.Base(c.file))
			s.Restore = &sdk.RestoreSpec{Path: c.file, Inputs: saved.Inputs}
			plan, err := vmm.Plan(ctx, s)
			if err != nil {
				t.Fatalf("Plan to restore %s: %v", c.file, err)
			}
			r := startPlan(t, plan)
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				console, _ := os.ReadFile(plan.ConsoleLog)
				if strings.Contains(string(console), c.want) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("restore of %s: the console never said %q: %s", c.file, c.want, console)
				}
			}
			if c.file == short {
				<-r.done
				if code := r.cmd.ProcessState.ExitCode(); code != 1 {
					t.Errorf("the \"VM\" restored from a truncated state exited %d, want 1", code)
				}
			}
		}
	}
}

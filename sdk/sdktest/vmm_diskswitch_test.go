package sdktest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boxctl/boxctl/sdk"
)

// switchingVMM plans a sleep process as its "VM", pauses it with SIGSTOP
// and switches its disks by bookkeeping: it remembers which file (by inode)
// each disk's top is and checks SwitchDisk against that, as a real VMM
// checks against the file it has open. defect names one contract breach
// for the DiskSwitch checks to catch ("" for none).
type switchingVMM struct {
	defect string

	mu    sync.Mutex
	disks map[string][]switchedDisk // by RunDir (the handle)
}

type switchedDisk struct {
	spec     sdk.DiskSpec
	dev, ino uint64
	// old is the file the disk was switched away from, for keeps-old-file.
	old string
}

func (v *switchingVMM) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "switching", Version: "0.0.1", Capabilities: sdk.Capabilities{AgentTransport: sdk.AgentVsock}}, nil
}

func (v *switchingVMM) Configure(context.Context, *sdk.Config) error { return nil }

func inode(path string) (dev, ino uint64, err error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, 0, err
	}
	return uint64(st.Dev), st.Ino, nil
}

func (v *switchingVMM) Plan(_ context.Context, spec sdk.VMSpec) (sdk.LaunchPlan, error) {
	var disks []switchedDisk
	for i, d := range spec.Disks {
		dev, ino, err := inode(d.Path)
		if err != nil {
			return sdk.LaunchPlan{}, fmt.Errorf("spec.Disks[%d]: %v: %w", i, err, sdk.ErrInvalidArgument)
		}
		disks = append(disks, switchedDisk{spec: d, dev: dev, ino: ino})
	}
	v.mu.Lock()
	if v.disks == nil {
		v.disks = map[string][]switchedDisk{}
	}
	v.disks[spec.RunDir] = disks
	v.mu.Unlock()
	return sdk.LaunchPlan{
		Argv: []string{"/bin/sleep", "1000"}, Handle: []byte(spec.RunDir),
		AgentSocket: filepath.Join(spec.RunDir, "agent.sock"), ConsoleLog: filepath.Join(spec.RunDir, "console.log"),
	}, nil
}

func (v *switchingVMM) Stop(_ context.Context, vm sdk.VM, force bool) error {
	sig := syscall.SIGTERM
	if force {
		sig = syscall.SIGKILL
	}
	if err := syscall.Kill(vm.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	// A stopped process acts on SIGTERM only once continued.
	_ = syscall.Kill(vm.PID, syscall.SIGCONT)
	return nil
}

// stopped reports whether process pid is stopped (state T).
func stopped(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'T'
}

func (v *switchingVMM) Pause(_ context.Context, vm sdk.VM) error {
	if err := syscall.Kill(vm.PID, syscall.SIGSTOP); err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); !stopped(vm.PID); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return errors.New("the VM did not stop")
		}
	}
	return nil
}

func (v *switchingVMM) Resume(_ context.Context, vm sdk.VM) error {
	if v.defect == "keeps-old-file" {
		// The "VM" goes on writing to the file it was switched away from.
		v.mu.Lock()
		for _, d := range v.disks[string(vm.Handle)] {
			if d.old != "" {
				_ = os.Chmod(d.old, 0o644)
				if f, err := os.OpenFile(d.old, os.O_WRONLY, 0); err == nil {
					_, _ = f.WriteAt([]byte("late write"), 4096)
					f.Close()
				}
			}
		}
		v.mu.Unlock()
	}
	return syscall.Kill(vm.PID, syscall.SIGCONT)
}

func (v *switchingVMM) SwitchDisk(_ context.Context, vm sdk.VM, index int, disk sdk.DiskSpec) (err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, sdk.ErrInvalidArgument)...)
	}
	defer func() {
		if err != nil && v.defect == "writes-overlay-on-refusal" {
			if f, ferr := os.OpenFile(disk.Path, os.O_WRONLY|os.O_APPEND, 0); ferr == nil {
				_, _ = f.Write([]byte("x"))
				f.Close()
			}
		}
	}()
	if !stopped(vm.PID) && v.defect != "switch-while-running" {
		return fmt.Errorf("the VM runs: %w", sdk.ErrInvalidState)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	disks := v.disks[string(vm.Handle)]
	if v.defect == "ignores-index" {
		index = 1
	}
	if index >= len(disks) || disks[index].spec.ReadOnly {
		return bad("no writable disk %d", index)
	}
	if dev, ino, err := inode(disk.Path); err == nil && dev == disks[index].dev && ino == disks[index].ino && v.defect != "not-idempotent" {
		return nil // on disk.Path already
	}
	dev, ino, err := inode(disk.BackingChain[0].Path)
	if err != nil {
		return bad("disk.BackingChain[0]: %v", err)
	}
	if (dev != disks[index].dev || ino != disks[index].ino) && v.defect != "ignores-chain" {
		return bad("disk.BackingChain[0] is not the VM's file")
	}
	if v.defect == "rewrites-header" {
		if out, err := exec.Command("qemu-img", "rebase", "-u", "-b", disk.BackingChain[0].Path, "-F", disk.BackingChain[0].Format, disk.Path).CombinedOutput(); err != nil {
			return fmt.Errorf("qemu-img rebase: %v: %s", err, out)
		}
	}
	if dev, ino, err = inode(disk.Path); err != nil {
		return bad("disk.Path: %v", err)
	}
	disks[index] = switchedDisk{spec: disk, dev: dev, ino: ino, old: disk.BackingChain[0].Path}
	return nil
}

// TestVMMSwitchSuiteHelper runs the suite's DiskSwitch checks against a
// switchingVMM; TestVMMSuiteCatchesSwitchDefects runs it in a child
// process.
func TestVMMSwitchSuiteHelper(t *testing.T) {
	defect, ok := os.LookupEnv("SDKTEST_SWITCH_DEFECT")
	if !ok {
		t.Skip("run by TestVMMSuiteCatchesSwitchDefects")
	}
	impl := &switchingVMM{defect: defect}
	VMMConformance(t, func(t *testing.T) sdk.VMM {
		vmm := Serve(t, sdk.ServeConfig{VMM: impl}).VMM
		if err := vmm.Configure(context.Background(), &sdk.Config{}); err != nil {
			t.Fatal(err)
		}
		return vmm
	})
}

// A DiskSwitch check that passes a defective switch proves nothing: each
// defect must fail the checks, and the VMM without one must pass.
func TestVMMSuiteCatchesSwitchDefects(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img not found: install qemu-utils")
	}
	for _, c := range []struct{ defect, want string }{
		{"", ""},
		{"switch-while-running", "want sdk.ErrInvalidState"},
		{"ignores-index", "a disk the VM does not have"},
		{"ignores-chain", "not the VM's file (a copy of it)"},
		{"writes-overlay-on-refusal", "a refused SwitchDisk changed the overlay"},
		{"rewrites-header", "the VMM must not rewrite it"},
		{"keeps-old-file", "changed after SwitchDisk"},
		{"not-idempotent", "SwitchDisk again with the same disk (a retry)"},
	} {
		t.Run("defect="+c.defect, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestVMMSwitchSuiteHelper$/^(Info|DiskSwitch|HandleFromAFreshPluginProcess|DiskSwitchAfterStop)$", "-test.v")
			cmd.Env = append(os.Environ(), "SDKTEST_SWITCH_DEFECT="+c.defect)
			out, err := cmd.CombinedOutput()
			switch {
			case c.defect == "" && (err != nil || !strings.Contains(string(out), "--- PASS: TestVMMSwitchSuiteHelper/DiskSwitchAfterStop")):
				t.Fatalf("the suite fails or skips a VMM without defects: %v\n%s", err, out)
			case c.defect != "" && (err == nil || !strings.Contains(string(out), c.want)):
				t.Fatalf("defect %s: the suite said (%v):\n%s\nwant a failure saying %q", c.defect, err, out, c.want)
			}
		})
	}
}

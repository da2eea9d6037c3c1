package qemuvmm

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/guest/vmtest"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// startCounter starts a process in the guest that counts in memory and
// writes the count to /dev/shm/count ten times a second.
func startCounter(t *testing.T, ctx context.Context, c *agentclient.Client) {
	t.Helper()
	script := `mkdir -p /dev/shm; i=0; while :; do i=$((i+1)); echo $i > /dev/shm/count; sleep 0.1; done`
	if _, err := c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"sh", "-c", script}, Detach: true}, nil, nil, nil, nil, nil); err != nil {
		t.Fatalf("start the counter: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.TrimSpace(guestRun(t, ctx, c, "cat /dev/shm/count 2>/dev/null || true")) != "" {
			return
		}
	}
	t.Fatalf("the counter never wrote /dev/shm/count: %s", guestRun(t, ctx, c, "ls -ld /run /run/* 2>&1; ps 2>&1 | tail -5"))
}

func readCount(t *testing.T, ctx context.Context, c *agentclient.Client) int {
	t.Helper()
	out := strings.TrimSpace(guestRun(t, ctx, c, "cat /dev/shm/count"))
	n, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("the guest's /dev/shm/count is %q", out)
	}
	return n
}

// TestSaveStateAndRestore saves a real guest under TCG, paused, with a
// process counting in memory, and starts a second QEMU from the file and a
// copy of the disks taken while the VM was paused: the agent answers and
// the count goes on from where it was, while the source VM, resumed, writes
// to its disk again. Refusals: SaveState of a running VM, a cancelled
// SaveState (no file, VM resumable), a restore whose inputs differ, a
// missing or foreign file, and a truncated state (the launcher exits
// non-zero, saying why).
func TestSaveStateAndRestore(t *testing.T) {
	ctx := context.Background()
	dir := shortDir(t)
	root := filepath.Join(dir, "root.ext4")
	if err := vmtest.MakeRootDisk(ctx, root); err != nil {
		t.Fatal(err)
	}
	store := newSwitchStore(t, dir)
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := sdk.VMSpec{
		BoxID: "save", VCPUs: 1, MemoryMiB: 256, RunDir: run,
		Network:    sdk.NetworkSpec{Mode: sdk.NetworkNone},
		KernelArgs: guestboot.Default().Args(),
		Disks: []sdk.DiskSpec{
			{Path: root, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
			store.spec(),
		},
	}
	l := launch(t, spec)
	c := l.agent(ctx)
	vm := l.control()
	guestRun(t, ctx, c, "echo before > /disk && sync")
	startCounter(t, ctx, c)
	states := filepath.Join(dir, "states")
	if err := os.Mkdir(states, 0o700); err != nil {
		t.Fatal(err)
	}
	statePath := filepath.Join(states, "s1")
	// A cancelled call returns to the client at once; the plugin cleans
	// up as it sees the cancellation.
	noTemp := func(t *testing.T) {
		t.Helper()
		var left []string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			left = nil
			entries, _ := os.ReadDir(states)
			for _, e := range entries {
				if e.Name() != "s1" && e.Name() != "s2" && e.Name() != "short" {
					left = append(left, e.Name())
				}
			}
			if len(left) == 0 {
				return
			}
		}
		t.Errorf("%v left in the state directory", left)
	}

	t.Run("RefusedWhileRunning", func(t *testing.T) {
		_, err := l.vmm.SaveState(ctx, vm, statePath)
		if !errors.Is(err, sdk.ErrInvalidState) || !strings.Contains(err.Error(), "pause it first") {
			t.Errorf("SaveState of a running VM: %v; want sdk.ErrInvalidState saying to pause it first", err)
		}
		if _, err := os.Lstat(statePath); err == nil {
			t.Error("a refused SaveState left a file")
		}
		noTemp(t)
	})

	t.Run("Cancelled", func(t *testing.T) {
		if err := l.vmm.Pause(ctx, vm); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
		_, err := l.vmm.SaveState(cctx, vm, statePath)
		cancel()
		if err == nil {
			t.Skip("SaveState finished within 30ms: nothing to cancel")
		}
		t.Logf("cancelled SaveState: %v", err)
		if _, err := os.Lstat(statePath); err == nil {
			t.Error("a cancelled SaveState left a file at path")
		}
		noTemp(t)
		if err := l.vmm.Resume(ctx, vm); err != nil {
			t.Fatalf("Resume after a cancelled SaveState: %v", err)
		}
		guestRun(t, ctx, c, "echo cancelled >> /disk && sync")
	})

	// Save: pause, SaveState, copy the disk, resume.
	if err := l.vmm.Pause(ctx, vm); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	saved, err := l.vmm.SaveState(ctx, vm, statePath)
	if err != nil {
		t.Fatalf("SaveState: %v%s", err, l.diag())
	}
	t.Logf("SaveState of a %d MiB guest: %d bytes in %s", spec.MemoryMiB, saved.Size, time.Since(started).Round(time.Millisecond))
	noTemp(t)
	if st, err := os.Stat(statePath); err != nil || st.Size() != saved.Size || st.Mode().Perm() != 0o600 {
		t.Errorf("state file: %v, %v; want %d bytes, mode 0600", st, err, saved.Size)
	}
	want, err := l.vmm.StateInputs(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(saved.Inputs) == 0 || !maps.Equal(saved.Inputs, want) {
		t.Errorf("SaveState's inputs %v; want StateInputs of the spec, %v", saved.Inputs, want)
	}
	if _, err := l.vmm.SaveState(ctx, vm, statePath); !errors.Is(err, sdk.ErrAlreadyExists) {
		t.Errorf("SaveState to an existing file: %v; want sdk.ErrAlreadyExists", err)
	}
	diskCopy := filepath.Join(dir, "disks", "copy.qcow2")
	runTool(t, "cp", "--sparse=always", store.disk, diskCopy)
	truncCopy := filepath.Join(dir, "disks", "copy2.qcow2")
	runTool(t, "cp", "--sparse=always", store.disk, truncCopy)
	if err := l.vmm.Resume(ctx, vm); err != nil {
		t.Fatalf("Resume after SaveState: %v%s", err, l.diag())
	}
	// QEMU inactivated the disks when the migration ended: the source
	// writes to them again.
	guestRun(t, ctx, c, "echo source-after > /after && sync")
	if got := guestRun(t, ctx, c, "cat /disk /after"); !strings.Contains(got, "source-after") {
		t.Errorf("the source reads %q after Resume", got)
	}
	atSave := readCount(t, ctx, c)

	restoreSpec := func(name, disk string) sdk.VMSpec {
		r := filepath.Join(dir, name)
		if err := os.Mkdir(r, 0o700); err != nil {
			t.Fatal(err)
		}
		s := spec
		s.BoxID, s.RunDir = name, r
		s.KernelArgs = nil
		s.Disks = []sdk.DiskSpec{spec.Disks[0], {Path: disk, Format: "qcow2", Role: sdk.DiskRoleWritable, BackingChain: store.chain}}
		s.Restore = &sdk.RestoreSpec{Path: statePath, Inputs: saved.Inputs}
		return s
	}

	t.Run("Restore", func(t *testing.T) {
		started := time.Now()
		l2 := launch(t, restoreSpec("r1", diskCopy))
		c2 := l2.agent(ctx)
		t.Logf("restore to agent ready: %s", time.Since(started).Round(time.Millisecond))
		n1 := readCount(t, ctx, c2)
		time.Sleep(500 * time.Millisecond)
		n2 := readCount(t, ctx, c2)
		if n1 < 1 || n2 <= n1 {
			t.Errorf("the restored guest counts %d then %d: want it to go on counting", n1, n2)
		}
		if n1 > atSave+50 {
			t.Errorf("the restored guest's count is %d, the source's was %d after the save: it did not start from the saved memory", n1, atSave)
		}
		if got := guestRun(t, ctx, c2, "cat /disk; ls /after 2>&1 || true"); !strings.HasPrefix(got, "before\n") || !strings.Contains(got, "No such file") {
			t.Errorf("the restored guest reads %q: want the disk as it was at the save", got)
		}
		guestRun(t, ctx, c2, "echo restored > /restored && sync")
	})

	t.Run("InputsDiffer", func(t *testing.T) {
		s := restoreSpec("r2", diskCopy)
		s.Restore.Inputs = maps.Clone(saved.Inputs)
		s.Restore.Inputs["memory"] = "128M"
		_, err := l.vmm.Plan(ctx, s)
		if !errors.Is(err, sdk.ErrInvalidState) || !strings.Contains(err.Error(), `"memory" was "128M"`) || !strings.Contains(err.Error(), `"256M" now`) {
			t.Errorf("Plan with other inputs: %v; want sdk.ErrInvalidState naming memory and both values", err)
		}
		s.Restore.Inputs = saved.Inputs
		s.MemoryMiB = 512
		if _, err := l.vmm.Plan(ctx, s); !errors.Is(err, sdk.ErrInvalidState) {
			t.Errorf("Plan with more memory than the state's: %v; want sdk.ErrInvalidState", err)
		}
	})

	t.Run("NotAState", func(t *testing.T) {
		s := restoreSpec("r3", diskCopy)
		s.Restore.Path = filepath.Join(dir, "missing")
		if _, err := l.vmm.Plan(ctx, s); !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), "missing") {
			t.Errorf("Plan with a missing state file: %v; want sdk.ErrInvalidArgument naming it", err)
		}
		s.Restore.Path = root
		if _, err := l.vmm.Plan(ctx, s); !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), "not a QEMU state file") {
			t.Errorf("Plan with a disk as the state file: %v; want sdk.ErrInvalidArgument", err)
		}
	})

	t.Run("Truncated", func(t *testing.T) {
		b, err := os.ReadFile(statePath)
		if err != nil {
			t.Fatal(err)
		}
		short := filepath.Join(states, "short")
		if err := os.WriteFile(short, b[:len(b)/2], 0o600); err != nil {
			t.Fatal(err)
		}
		s := restoreSpec("r4", truncCopy)
		s.Restore.Path = short
		l3 := launch(t, s)
		select {
		case <-l3.done:
		case <-time.After(2 * time.Minute):
			t.Fatalf("QEMU given a truncated state still runs%s", l3.diag())
		}
		if code := l3.cmd.ProcessState.ExitCode(); code == 0 {
			t.Errorf("the launcher exited 0 on a truncated state")
		}
		if log := l3.stderr.String(); !strings.Contains(log, "load of migration failed") {
			t.Errorf("the launcher's log does not say why: %s", log)
		}
	})

	t.Run("DiskLocked", func(t *testing.T) {
		// The state loads, but its writable disk is the source's, which
		// holds the disk's lock: the VM cannot run, and the launcher
		// says so and exits instead of leaving it paused.
		l4 := launch(t, restoreSpec("r5", store.disk))
		select {
		case <-l4.done:
		case <-time.After(2 * time.Minute):
			t.Fatalf("a restored VM that cannot run is still there%s", l4.diag())
		}
		if code := l4.cmd.ProcessState.ExitCode(); code != 1 {
			t.Errorf("the launcher exited %d, want 1", code)
		}
		if log := l4.stderr.String(); !strings.Contains(log, "cannot run from its saved state") || !strings.Contains(log, "lock") {
			t.Errorf("the launcher's log does not say why: %s", log)
		}
	})

	t.Run("SwitchDiskAfterSaveState", func(t *testing.T) {
		// The core may take the disks' state with SwitchDisk right after
		// SaveState, in the same pause.
		if err := l.vmm.Pause(ctx, vm); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(states, "s2")
		if _, err := l.vmm.SaveState(ctx, vm, p); err != nil {
			t.Fatal(err)
		}
		disk, _ := store.freeze()
		err := l.vmm.SwitchDisk(ctx, vm, 1, disk)
		if rerr := l.vmm.Resume(ctx, vm); rerr != nil {
			t.Fatal(rerr)
		}
		if err != nil {
			t.Fatalf("SwitchDisk after SaveState: %v%s", err, l.diag())
		}
		guestRun(t, ctx, c, "echo switched > /switched && sync")
	})
}

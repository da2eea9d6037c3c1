package sdktest

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/boxctl/boxctl/sdk"
)

// checkMemorySnapshot does what the core does to checkpoint a running box
// and start another from the checkpoint, on the shared VM: pause,
// SaveState, a copy of each writable disk while still paused, resume. It
// holds the plugin to vmm.proto: SaveState of a running VM is refused
// (FAILED_PRECONDITION) and writes nothing; the state file exists with
// the size SaveState reports and nothing else is left next to it; the
// inputs are non-empty and StateInputs of the same spec; a second
// SaveState to the same path is ALREADY_EXISTS; the VM runs again after
// Resume. A restore plan with other inputs is FAILED_PRECONDITION, one
// naming a missing file an error; and a VM started from the state and the
// copies runs (with WithGuest: its agent answers).
func checkMemorySnapshot(e *vmmEnv) {
	t := e.t
	m, ok := e.vmm.(sdk.MemorySnapshotter)
	if !ok {
		t.Fatal("the plugin declares memory-snapshot, but its client is no sdk.MemorySnapshotter")
	}
	p, ok := e.vmm.(sdk.Pauser)
	if !ok || !e.info.Capabilities.Pause {
		t.Fatal("the plugin declares memory-snapshot but not pause: a VM's state is saved only while it is paused")
	}
	if e.vm.exited() {
		t.Fatalf("the shared VM exited before the check: %v", e.vm.err)
	}
	dir := shortTempDir(t)
	states := filepath.Join(dir, "states")
	if err := os.Mkdir(states, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(states, "state")
	vm := e.ref()
	if _, err := m.SaveState(e.ctx, vm, path); !errors.Is(err, sdk.ErrInvalidState) {
		t.Errorf("SaveState of a running VM: %v, want sdk.ErrInvalidState", err)
	}
	if _, err := os.Lstat(path); err == nil {
		t.Fatal("a refused SaveState left a file at path")
	}
	if _, err := m.SaveState(e.ctx, vm, "state"); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Errorf("SaveState to a relative path: %v, want sdk.ErrInvalidArgument", err)
	}
	if err := p.Pause(e.ctx, vm); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = p.Resume(e.ctx, vm)
		}
	}()
	started := time.Now()
	saved, err := m.SaveState(e.ctx, vm, path)
	if err != nil {
		t.Fatalf("SaveState of a paused VM: %v", err)
	}
	t.Logf("SaveState: %d bytes in %s", saved.Size, time.Since(started).Round(time.Millisecond))
	disks := filepath.Join(dir, "disks")
	if err := os.Mkdir(disks, 0o700); err != nil {
		t.Fatal(err)
	}
	restored := e.spec
	restored.Disks = slices.Clone(e.spec.Disks)
	for i, d := range restored.Disks {
		if d.ReadOnly {
			continue
		}
		copied := filepath.Join(disks, filepath.Base(d.Path))
		copySparse(t, copied, d.Path)
		restored.Disks[i].Path = copied
	}
	_, again := m.SaveState(e.ctx, vm, path)
	if err := p.Resume(e.ctx, vm); err != nil {
		t.Fatalf("Resume after SaveState: %v", err)
	}
	resumed = true
	if !errors.Is(again, sdk.ErrAlreadyExists) {
		t.Errorf("SaveState to an existing file: %v, want sdk.ErrAlreadyExists", again)
	}
	st, err := os.Stat(path)
	switch {
	case err != nil:
		t.Fatalf("SaveState succeeded, but: %v", err)
	case st.Size() != saved.Size || saved.Size <= 0:
		t.Errorf("SaveState says %d bytes, the file has %d", saved.Size, st.Size())
	}
	if left, _ := os.ReadDir(states); len(left) != 1 {
		t.Errorf("next to the state file: %v, want only the file", left)
	}
	want, err := m.StateInputs(e.ctx, e.spec)
	if err != nil {
		t.Fatalf("StateInputs: %v", err)
	}
	if len(saved.Inputs) == 0 || !maps.Equal(saved.Inputs, want) {
		t.Errorf("SaveState's inputs %v, want StateInputs of the VM's spec %v (non-empty)", saved.Inputs, want)
	}

	restoreSpec := func(name string) sdk.VMSpec {
		s := restored
		s.RunDir = filepath.Join(dir, name)
		if err := os.Mkdir(s.RunDir, 0o700); err != nil {
			t.Fatal(err)
		}
		s.Restore = &sdk.RestoreSpec{Path: path, Inputs: maps.Clone(saved.Inputs)}
		return s
	}
	other := restoreSpec("other")
	for k := range other.Restore.Inputs {
		other.Restore.Inputs[k] += " (changed)"
		break
	}
	if _, err := e.vmm.Plan(e.ctx, other); !errors.Is(err, sdk.ErrInvalidState) {
		t.Errorf("Plan to restore a state whose inputs differ: %v, want sdk.ErrInvalidState", err)
	}
	missing := restoreSpec("missing")
	missing.Restore.Path = filepath.Join(dir, "no-such-state")
	if _, err := e.vmm.Plan(e.ctx, missing); err == nil {
		t.Error("Plan to restore a state file that does not exist succeeded")
	}

	spec := restoreSpec("run")
	plan, err := e.vmm.Plan(e.ctx, spec)
	if err != nil {
		t.Fatalf("Plan to restore the state: %v", err)
	}
	started = time.Now()
	r, err := startVM(plan, spec.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.kill)
	if e.s.wait != nil {
		if err := waitGuest(e.ctx, e.s.wait, plan.AgentSocket, r); err != nil {
			log, _ := os.ReadFile(r.log)
			t.Fatalf("the restored VM's guest agent did not answer on %s: %v\n%s", plan.AgentSocket, err, tail(string(log), 3000))
		}
		t.Logf("restored VM's agent answered after %s", time.Since(started).Round(time.Millisecond))
	} else if r.waitExit(time.Second) {
		log, _ := os.ReadFile(r.log)
		t.Fatalf("the restored VM exited: %v\n%s", r.err, tail(string(log), 3000))
	}
	if e.vm.exited() {
		t.Fatalf("the source VM exited after the save: %v", e.vm.err)
	}
}

package core

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/boxctl/boxctl/core/boxstatus"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/monitor"
	"github.com/boxctl/boxctl/core/state"
)

// pendingSuspend marks a box being suspended. Recovery keeps a box whose
// state was recorded suspended (its VM is gone or goes), and otherwise
// drops the half-saved state: the box runs on, its monitor having resumed
// it.
const pendingSuspend = "suspend"

// SuspendInfo says what a suspend saved.
type SuspendInfo struct {
	Size   int64         `json:"size"`
	Paused time.Duration `json:"paused_ns"`
}

// Suspend saves running box ref's memory and stops its VM, freeing the
// memory; the next Start resumes it with every process as it was. Its disk
// is kept as it is (it must not change until then: operations that would
// change it refuse a suspended box). Suspending a suspended box does
// nothing.
func (r *Runtime) Suspend(ctx context.Context, ref string) (SuspendInfo, error) {
	if err := r.checkOpen(); err != nil {
		return SuspendInfo{}, err
	}
	b, lock, err := r.lockAndLoad(ctx, ref)
	if err != nil {
		return SuspendInfo{}, err
	}
	defer lock.Release()
	switch {
	case b.Status == model.StatusSuspended:
		return SuspendInfo{}, nil
	case b.Status == model.StatusPaused:
		return SuspendInfo{}, fmt.Errorf("suspend %s: the box is paused: run `boxctl unpause %s` first: %w", b.Name, b.Name, ErrInvalidState)
	case b.Status != model.StatusRunning || b.Run == nil || !r.runAlive(ctx, b):
		return SuspendInfo{}, fmt.Errorf("suspend %s: the box is %s; only a running box can be suspended: %w", b.Name, b.Status, ErrInvalidState)
	}
	if err := refuseMounts("suspend", b); err != nil {
		return SuspendInfo{}, err
	}
	ms, err := r.memorySnapshotter(ctx, b, "suspend "+b.Name)
	if err != nil {
		return SuspendInfo{}, err
	}
	vmm, err := r.pauser(ctx, b)
	if err != nil {
		return SuspendInfo{}, fmt.Errorf("suspend %s: %w", b.Name, err)
	}
	if err := r.setPending(ctx, b.ID, pendingSuspend); err != nil {
		return SuspendInfo{}, err
	}
	r.crashPoint("suspend", "pending")
	// The monitor's guard resumes the VM should this process die before
	// the state is recorded.
	release, err := monitor.Hold(ctx, r.paths.monitorSocket(b.ID), bracketLimit)
	if err != nil {
		r.clearPending(ctx, b.ID)
		return SuspendInfo{}, fmt.Errorf("suspend %s: %w", b.Name, err)
	}
	defer func() { _ = release() }()
	vm := vmRef(b.Run)
	pausedAt := time.Now()
	resume := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := vmm.Resume(rctx, vm); err != nil {
			r.log.Warn("suspend: resume the VM after a failed save", "box", b.ID, "error", err)
		}
		r.clearPending(ctx, b.ID)
	}
	bctx, cancel := context.WithTimeout(ctx, bracketLimit)
	defer cancel()
	if err := vmm.Pause(bctx, vm); err != nil {
		resume()
		return SuspendInfo{}, fmt.Errorf("suspend %s: pause its vCPUs: %w", b.Name, err)
	}
	r.crashPoint("suspend", "paused")
	st, err := r.saveState(bctx, ms, vm, r.paths.vmStateDir(b.ID), "suspend")
	if err == nil {
		// Still paused: this VM does not run again, so its pause does not
		// matter, and the state must be durable before the VM goes.
		if err = sealState(&st); err != nil {
			r.removeStateFile(st)
		}
	}
	if err != nil {
		resume()
		return SuspendInfo{}, fmt.Errorf("suspend %s: %w", b.Name, err)
	}
	cp := model.Checkpoint{BoxID: b.ID, Name: model.SuspendCheckpoint, CreatedAt: time.Now().UTC(), State: st,
		CPUs: b.Config.CPUs, MemoryMiB: b.Config.MemoryMiB, Paused: time.Since(pausedAt)}
	if err := r.store.Update(ctx, func(tx *state.Tx) error { return tx.PutCheckpoint(cp) }); err != nil {
		r.removeStateFile(st)
		resume()
		return SuspendInfo{}, fmt.Errorf("suspend %s: %w", b.Name, err)
	}
	r.crashPoint("suspend", "saved")
	// From here the saved state is the box: its VM must not run again.
	// A timeout of 0 kills the paused VM at once (its disks were flushed
	// when it paused).
	if _, err := monitor.Stop(context.WithoutCancel(ctx), r.paths.monitorSocket(b.ID), 0); err != nil && !errors.Is(err, monitor.ErrNoMonitor) {
		r.log.Warn("suspend: stop the VM through its monitor", "box", b.ID, "error", err)
	}
	if cur, err := r.reload(ctx, b.ID); err == nil && cur.Status.Active() {
		if _, err := r.stopLocked(context.WithoutCancel(ctx), cur, 0); err != nil {
			return SuspendInfo{}, fmt.Errorf("suspend %s: stop its VM: %w", b.Name, err)
		}
	}
	if err := r.finishSuspend(context.WithoutCancel(ctx), b.ID); err != nil {
		return SuspendInfo{}, err
	}
	return SuspendInfo{Size: st.Size, Paused: cp.Paused}, nil
}

// finishSuspend marks box id, whose VM is gone and whose state is
// recorded, suspended.
func (r *Runtime) finishSuspend(ctx context.Context, id string) error {
	return r.store.Update(ctx, func(tx *state.Tx) error {
		b, err := boxstatus.Suspended(tx, id)
		if err != nil {
			return fmt.Errorf("suspend: %w", err)
		}
		b.Pending = ""
		return tx.PutBox(b)
	})
}

// recoverSuspend finishes or rolls back a suspend a dead process left: a
// recorded state whose VM is gone makes the box suspended; otherwise the
// VM runs on (its monitor resumed it) and a recorded state is dropped.
func (r *Runtime) recoverSuspend(ctx context.Context, b *model.Box) {
	cp, err := r.checkpointOf(ctx, b, model.SuspendCheckpoint)
	recorded := err == nil
	if recorded && !b.Status.Active() {
		if err := r.finishSuspend(ctx, b.ID); err != nil {
			r.log.Warn("recovery: finish a suspend", "box", b.ID, "error", err)
		}
		return
	}
	if recorded {
		r.forgetCheckpoint(ctx, cp)
	}
	r.clearPending(ctx, b.ID)
}

package core

import (
	"context"
	"fmt"
	"time"

	"github.com/boxctl/boxctl/core/boxstatus"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/monitor"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/sdk"
)

// Pause stops a running box's vCPUs (through the VMM plugin). The guest
// agent does not answer while the box is paused.
func (r *Runtime) Pause(ctx context.Context, ref string) error {
	return r.setPaused(ctx, ref, true)
}

// Resume restarts a paused box's vCPUs.
func (r *Runtime) Resume(ctx context.Context, ref string) error {
	return r.setPaused(ctx, ref, false)
}

func (r *Runtime) setPaused(ctx context.Context, ref string, pause bool) error {
	b, lock, err := r.lockAndLoad(ctx, ref)
	if err != nil {
		return err
	}
	defer lock.Release()
	if !pause {
		return r.resumeLocked(ctx, b)
	}
	if b.Status == model.StatusPaused {
		return nil
	}
	if b.Status != model.StatusRunning || b.Run == nil {
		return fmt.Errorf("box %s is %s, not running: %w", b.Name, b.Status, ErrInvalidState)
	}
	vmm, err := r.pauser(ctx, b)
	if err != nil {
		return err
	}
	if err := vmm.Pause(ctx, vmRef(b.Run)); err != nil {
		return fmt.Errorf("pause %s: %w", b.Name, err)
	}
	return r.store.Update(ctx, func(tx *state.Tx) error {
		_, err := boxstatus.Pause(tx, b.ID, b.Run.ID, model.Pause{Cause: model.PauseRequested, At: time.Now().UTC()})
		return err
	})
}

// pauser returns box b's VMM plugin when it can pause and resume VMs.
func (r *Runtime) pauser(ctx context.Context, b *model.Box) (sdk.Pauser, error) {
	vmm, err := r.vmmOf(ctx, b)
	if err != nil {
		return nil, err
	}
	if !vmm.info.Capabilities.Pause {
		return nil, fmt.Errorf("the %s VMM (plugin %q) cannot pause and resume VMs: %w", vmm.info.Name, vmm.name, ErrUnsupported)
	}
	return vmm, nil
}

// resumeLocked continues a paused box: paused by request, or by the
// hypervisor after a disk error (once the cause is fixed). The caller holds
// the box lock.
func (r *Runtime) resumeLocked(ctx context.Context, b *model.Box) error {
	if b.Status == model.StatusRunning {
		return nil
	}
	if b.Status != model.StatusPaused || b.Run == nil {
		return fmt.Errorf("box %s is %s, not paused: %w", b.Name, b.Status, ErrInvalidState)
	}
	vmm, err := r.pauser(ctx, b)
	if err != nil {
		return err
	}
	if err := vmm.Resume(ctx, vmRef(b.Run)); err != nil {
		return fmt.Errorf("resume %s: %w", b.Name, err)
	}
	ioError := b.PausedByIOError()
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		_, err := boxstatus.Resume(tx, b.ID, b.Run.ID)
		return err
	})
	if err != nil || !ioError || b.Run.StateFile == "" {
		return err
	}
	// The hypervisor stops the guest again at once if the disk is still
	// full: say so instead of reporting success.
	time.Sleep(resumeSettle)
	st, serr := monitor.ReadVMState(b.Run.StateFile)
	if serr != nil || st.State != monitor.VMIOError {
		return nil
	}
	var still *model.Box
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		var err error
		still, err = boxstatus.Pause(tx, b.ID, b.Run.ID, model.Pause{Cause: model.PauseIOError, Reason: st.Reason, Device: st.Device, At: time.Now().UTC()})
		return err
	})
	if err != nil {
		return err
	}
	return pausedError(still)
}

// resumeSettle is how long a resume of a box paused on a disk error waits
// to see whether the hypervisor stops it again.
const resumeSettle = 500 * time.Millisecond

// pausedError explains why a paused box cannot run commands and what to do.
func pausedError(b *model.Box) error {
	if b.PausedByIOError() {
		p := b.Run.Pause
		reason := p.Reason
		if reason == "" {
			reason = "a disk request failed"
		}
		dev := ""
		if p.Device != "" {
			dev = " on " + p.Device
		}
		return fmt.Errorf("box %s is paused: the hypervisor stopped it because a write to its disk%s failed (%s); "+
			"free space on the host filesystem that holds boxctl's home, then run `boxctl unpause %s`: %w", b.Name, dev, reason, b.Name, ErrInvalidState)
	}
	return fmt.Errorf("box %s is paused: run `boxctl unpause %s` first: %w", b.Name, b.Name, ErrInvalidState)
}

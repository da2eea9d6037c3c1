package core

import (
	"context"
	"fmt"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
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
	from, to := model.StatusRunning, model.StatusPaused
	if !pause {
		from, to = to, from
	}
	if b.Status == to {
		return nil
	}
	if b.Status != from || b.Run == nil {
		return fmt.Errorf("box %s is %s, not %s: %w", b.Name, b.Status, from, ErrInvalidState)
	}
	vmm, err := r.plugins.VMM(ctx)
	if err != nil {
		return fmt.Errorf("vmm plugin: %w", err)
	}
	req := &pluginv1.ControlRequest{Handle: b.Run.Handle, Pid: int64(b.Run.VM.PID)}
	if pause {
		err = vmm.Pause(ctx, req)
	} else {
		err = vmm.Resume(ctx, req)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", map[bool]string{true: "pause", false: "resume"}[pause], b.Name, err)
	}
	return r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Box(b.ID)
		if err != nil {
			return err
		}
		if cur.Status == from {
			cur.Status = to
		}
		return tx.PutBox(cur)
	})
}

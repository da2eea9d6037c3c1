package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/sdk"
)

// capture is running box b at one instant: its VM's memory saved to a
// file, and its writable disk as it was then, cloned (in constant time)
// into each of disks.
type capture struct {
	state  model.VMState
	paused Quiesced
}

// captureRunning takes a capture of running box b inside the paused
// bracket (vCPUs stopped, filesystem not frozen: the page cache is saved
// with the memory). The state file goes into dir, named after name. On
// error nothing of it is left: no file, no clone, and the VM runs on. The
// caller holds the box lock and marks the box pending.
func (r *Runtime) captureRunning(ctx context.Context, b *model.Box, what string, disks []string, dir, name string) (capture, error) {
	var c capture
	if b.Status != model.StatusRunning || b.Run == nil {
		if b.Status == model.StatusPaused {
			return c, fmt.Errorf("%s %s: the box is paused: run `boxctl unpause %s` first: %w", what, b.Name, b.Name, ErrInvalidState)
		}
		return c, fmt.Errorf("%s %s: the box is %s; it must be running: %w", what, b.Name, b.Status, ErrInvalidState)
	}
	ms, err := r.memorySnapshotter(ctx, b, what+" "+b.Name)
	if err != nil {
		return c, err
	}
	var sw sdk.DiskSwitcher
	var cloner sdk.Cloner
	if len(disks) > 0 {
		if sw, err = r.liveDiskSwitcher(ctx, b, what); err != nil {
			return c, err
		}
		snaps, err := r.plugins.Snapshots(ctx)
		if err != nil {
			return c, fmt.Errorf("storage plugin: %w", err)
		}
		var ok bool
		if cloner, ok = snaps.(sdk.Cloner); !ok {
			return c, fmt.Errorf("%s %s: the storage plugin %q cannot clone disks: %w", what, b.Name, r.cfg.Storage, ErrUnsupported)
		}
	}
	var made []string
	c.paused, err = r.paused(ctx, b, what, func(ctx context.Context, vm sdk.VM) error {
		if len(disks) > 0 {
			was, err := r.openDisk(ctx, b)
			if err != nil {
				return err
			}
			var cerr error
			for _, id := range disks {
				if _, cerr = cloner.Clone(ctx, sdk.CloneRequest{ID: b.DiskID, NewID: id}); cerr != nil {
					cerr = fmt.Errorf("clone its disk: %w", cerr)
					break
				}
				made = append(made, id)
			}
			r.crashPoint(what, "disks")
			// The first clone may have frozen the disk's file: the VM moves
			// on to the new overlay in any case.
			if serr := r.switchWritable(context.WithoutCancel(ctx), b, sw, vm, was); serr != nil || cerr != nil {
				return errors.Join(cerr, serr)
			}
		}
		st, err := r.saveState(ctx, ms, vm, dir, name)
		if err != nil {
			return err
		}
		r.crashPoint(what, "saved")
		c.state = st
		return nil
	})
	if err == nil {
		err = sealState(&c.state)
	}
	if err != nil {
		r.removeStateFile(c.state)
		r.removeDisks(context.WithoutCancel(ctx), made)
		return capture{}, fmt.Errorf("%s %s: %w", what, b.Name, err)
	}
	return c, nil
}

// removeDisks removes storage disks made for something that failed.
func (r *Runtime) removeDisks(ctx context.Context, ids []string) {
	if len(ids) == 0 {
		return
	}
	disks, err := r.plugins.Disks(ctx)
	if err != nil {
		r.log.Warn("storage plugin", "error", err)
		return
	}
	for _, id := range ids {
		if err := disks.RemoveDisk(ctx, id); err != nil && !errors.Is(err, sdk.ErrNotFound) {
			r.log.Warn("remove a disk", "disk", id, "error", err)
		}
	}
}

// sweepStates removes the files in box b's state directory that no record
// of it names: what a save that died left (a complete file not yet
// recorded, or the VMM's temporary one). The caller holds b's lock.
func (r *Runtime) sweepStates(ctx context.Context, b *model.Box) {
	var cps []model.Checkpoint
	_ = r.store.View(ctx, func(tx *state.Tx) error {
		var err error
		cps, err = tx.Checkpoints(b.ID)
		return err
	})
	keep := map[string]bool{}
	for _, c := range cps {
		keep[c.State.File] = true
	}
	dir := r.paths.vmStateDir(b.ID)
	names, _ := readNames(dir)
	for _, n := range names {
		if p := filepath.Join(dir, n); !keep[p] {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				r.log.Warn("recovery: remove a half-saved VM state", "file", p, "error", err)
			}
		}
	}
}

// recoverCapture finishes or rolls back what a dead process left of a
// capture of box b's memory (a suspend, checkpoint, boot template or fork).
func (r *Runtime) recoverCapture(ctx context.Context, b *model.Box) {
	defer r.sweepStates(ctx, b)
	switch {
	case b.Pending == pendingSuspend:
		r.recoverSuspend(ctx, b)
	case strings.HasPrefix(b.Pending, pendingCheckpoint):
		r.recoverCheckpoint(ctx, b)
	case strings.HasPrefix(b.Pending, pendingTemplate):
		r.recoverTemplate(ctx, b)
	case b.Pending == pendingFork:
		r.recoverForkSource(ctx, b)
	}
}

package core

import (
	"context"
	"fmt"
	"time"

	"github.com/boxctl/boxctl/core/boxstatus"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
)

// pendingFork marks a running box being forked; recovery removes the
// state file a dead fork left (the forks themselves are marked "cloning"
// and removed).
const pendingFork = "fork"

// pendingForking marks a fork until all forks run: recovery stops and
// removes a fork of a fork that died half-way.
const pendingForking = "forking"

// ForkOptions tune Fork.
type ForkOptions struct {
	// Name of the fork; with Count > 1 the forks are Name-1 ... Name-N.
	// "" generates names.
	Name string
	// Count is how many forks to make (0 means 1).
	Count int
	// Detach overrides the source's detach setting for the forks.
	Detach *bool
}

// ForkInfo says what a fork took.
type ForkInfo struct {
	Boxes []*Box
	// Paused is how long the source's vCPUs were stopped.
	Paused time.Duration
	// StateSize is the size of the memory state the forks started from.
	StateSize int64
}

// Fork makes Count new running boxes from this instant of running box
// srcRef: memory and processes included, each with its own O(1) clone of
// the source's writable disk. All or none: if one fork cannot start, none
// is left. The source keeps running.
func (r *Runtime) Fork(ctx context.Context, srcRef string, opts ForkOptions) (ForkInfo, error) {
	if err := r.checkOpen(); err != nil {
		return ForkInfo{}, err
	}
	count := opts.Count
	if count == 0 {
		count = 1
	}
	if count < 0 || count > maxClones {
		return ForkInfo{}, fmt.Errorf("fork: count %d out of range 1-%d: %w", opts.Count, maxClones, ErrInvalidArgument)
	}
	src, lock, err := r.lockAndLoad(ctx, srcRef)
	if err != nil {
		return ForkInfo{}, err
	}
	defer lock.Release()
	if src.Status != model.StatusRunning || !r.runAlive(ctx, src) {
		return ForkInfo{}, fmt.Errorf("fork %s: the box is %s; only a running box can be forked (boxctl clone copies a stopped one): %w", src.Name, src.Status, ErrInvalidState)
	}
	if err := refuseMounts("fork", src); err != nil {
		return ForkInfo{}, err
	}
	if _, err := r.memorySnapshotter(ctx, src, "fork "+src.Name); err != nil {
		return ForkInfo{}, err
	}
	clones, unlock, err := r.insertClones(ctx, src, CloneOptions{Name: opts.Name}, count)
	if err != nil {
		return ForkInfo{}, err
	}
	r.crashPoint("fork", "records")
	var started []*model.Box
	done := false
	defer func() {
		if !done {
			for _, c := range started {
				if _, err := r.stopLocked(context.WithoutCancel(ctx), c, 0); err != nil {
					r.log.Warn("fork: stop a fork of a failed fork", "box", c.ID, "error", err)
				}
			}
			r.discardClones(ctx, clones)
		}
		unlock()
	}()
	if err := r.setPending(ctx, src.ID, pendingFork); err != nil {
		return ForkInfo{}, err
	}
	defer r.clearPending(ctx, src.ID)
	disks := make([]string, len(clones))
	for i, c := range clones {
		disks[i] = c.DiskID
	}
	c, err := r.captureRunning(ctx, src, "fork", disks, r.paths.vmStateDir(src.ID), "fork")
	if err != nil {
		return ForkInfo{}, err
	}
	// The forks' QEMUs read all of it at start: the file is not needed once
	// they run.
	defer r.removeStateFile(c.state)
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		for _, c := range clones {
			b, err := boxstatus.Cloned(tx, c.ID)
			if err != nil {
				return err
			}
			// Still a fork in the making: recovery stops and removes it.
			b.Pending = pendingForking
			if err := tx.PutBox(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return ForkInfo{}, err
	}
	r.crashPoint("fork", "cloned")
	// Sealed moments ago: its checksum was taken from the bytes on disk.
	rf := &restoreFrom{state: c.state, what: "the fork of " + src.Name, verified: true}
	for _, cl := range clones {
		b, err := r.reload(ctx, cl.ID)
		if err != nil {
			return ForkInfo{}, err
		}
		if err := r.startLocked(ctx, b, startOptions{detach: opts.Detach, restore: rf}); err != nil {
			return ForkInfo{}, fmt.Errorf("fork %s: %w", src.Name, err)
		}
		if b, err = r.reload(ctx, cl.ID); err != nil {
			return ForkInfo{}, err
		}
		started = append(started, b)
		r.crashPoint("fork", "started")
	}
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		for _, c := range clones {
			b, err := tx.Box(c.ID)
			if err != nil {
				return err
			}
			b.Pending = ""
			if err := tx.PutBox(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return ForkInfo{}, err
	}
	done = true
	out := ForkInfo{Paused: c.paused.Paused, StateSize: c.state.Size}
	for _, cl := range clones {
		out.Boxes = append(out.Boxes, &Box{rt: r, id: cl.ID})
	}
	return out, nil
}

// recoverForkSource moves the VM of box b, whose fork died, onto its
// disk's top file (recoverCapture sweeps the state file it left).
func (r *Runtime) recoverForkSource(ctx context.Context, b *model.Box) {
	if err := r.resyncLiveDisk(ctx, b); err != nil {
		r.log.Warn("recovery: move a box's VM onto its disk's top file", "box", b.ID, "error", err)
	}
	r.clearPending(ctx, b.ID)
}

package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/monitor"
	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/sdk"
)

// Quiesced says how long a running box was held for disk work: its
// writable filesystem frozen (writers blocked) and, inside that, its vCPUs
// paused.
type Quiesced struct {
	Frozen time.Duration `json:"frozen_ns"`
	Paused time.Duration `json:"paused_ns"`
}

// bracketLimit bounds a quiesce bracket: past it the monitor resumes the VM
// and the guest agent thaws by itself (its freeze lease), whatever became
// of this process.
const bracketLimit = 30 * time.Second

// quiesced runs fn on running box b inside the quiesce bracket: the guest
// agent syncs and freezes the writable filesystem, the VMM pauses the
// vCPUs, fn does the disk work, then the VM resumes and the guest thaws —
// always, also when fn fails or ctx ends. The box's monitor guards the
// bracket: if this process dies in it, the monitor resumes and thaws. The
// caller holds the box lock.
func (r *Runtime) quiesced(ctx context.Context, b *model.Box, what string, fn func(ctx context.Context, vm sdk.VM) error) (Quiesced, error) {
	return r.bracket(ctx, b, what, true, fn)
}

// paused is the quiesce bracket without the filesystem freeze: for work
// that saves the guest's memory with its disks (a checkpoint, a fork, a
// boot template), where the page cache is part of what is saved — a
// frozen filesystem would be restored frozen.
func (r *Runtime) paused(ctx context.Context, b *model.Box, what string, fn func(ctx context.Context, vm sdk.VM) error) (Quiesced, error) {
	return r.bracket(ctx, b, what, false, fn)
}

func (r *Runtime) bracket(ctx context.Context, b *model.Box, what string, freeze bool, fn func(ctx context.Context, vm sdk.VM) error) (q Quiesced, err error) {
	if b.Status == model.StatusPaused {
		return q, fmt.Errorf("%s %s: the box is paused, so its guest cannot freeze its filesystem: run `boxctl unpause %s` first: %w", what, b.Name, b.Name, ErrInvalidState)
	}
	if b.Status != model.StatusRunning || b.Run == nil {
		return q, fmt.Errorf("%s %s: the box is %s: %w", what, b.Name, b.Status, ErrInvalidState)
	}
	vmm, err := r.pauser(ctx, b)
	if err != nil {
		return q, fmt.Errorf("%s %s while it runs: %w", what, b.Name, err)
	}
	release, err := monitor.Hold(ctx, r.paths.monitorSocket(b.ID), bracketLimit)
	if errors.Is(err, monitor.ErrNoMonitor) {
		return q, fmt.Errorf("%s %s while it runs: its monitor is gone, and without it nothing would resume the VM should this command die; stop the box (boxctl stop %s) and try again: %w", what, b.Name, b.Name, ErrInvalidState)
	}
	if err != nil {
		return q, fmt.Errorf("%s %s: %w", what, b.Name, err)
	}
	defer func() {
		if rerr := release(); rerr != nil && err == nil {
			r.log.Warn("quiesce bracket: release the monitor's guard", "box", b.ID, "error", rerr)
		}
	}()
	bctx, cancel := context.WithTimeout(ctx, bracketLimit)
	defer cancel()
	if freeze {
		g, err := r.freezeGuest(ctx, bctx, b, what)
		if err != nil {
			return q, err
		}
		defer func() {
			frozen, terr := g.thaw(ctx)
			q.Frozen = frozen
			if terr != nil && err == nil {
				err = terr
			}
		}()
	}
	vm := vmRef(b.Run)
	paused := time.Now()
	if err := vmm.Pause(bctx, vm); err != nil {
		_ = vmm.Resume(context.WithoutCancel(ctx), vm)
		return q, fmt.Errorf("%s %s: pause its vCPUs: %w", what, b.Name, err)
	}
	r.crashPoint(what, "paused")
	defer func() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer rcancel()
		if rerr := vmm.Resume(rctx, vm); rerr != nil && err == nil {
			err = fmt.Errorf("%s %s: resume its vCPUs: %w", what, b.Name, rerr)
		}
		q.Paused = time.Since(paused)
	}()
	return q, fn(bctx, vm)
}

// frozenGuest is a guest whose writable filesystem a bracket froze.
type frozenGuest struct {
	r     *Runtime
	b     *model.Box
	what  string
	agent *agentclient.Client
	at    time.Time
}

// freezeGuest has box b's guest agent sync and freeze its writable
// filesystem, with the bracket's lease: the guest thaws by itself should
// this process die.
func (r *Runtime) freezeGuest(ctx, bctx context.Context, b *model.Box, what string) (*frozenGuest, error) {
	agent, err := agentclient.Dial(ctx, b.Run.AgentSocket)
	if err != nil {
		return nil, fmt.Errorf("%s %s: guest agent: %w", what, b.Name, err)
	}
	g := &frozenGuest{r: r, b: b, what: what, agent: agent, at: time.Now()}
	if _, err := agent.Quiesce(bctx, bracketLimit); err != nil {
		_, _ = agent.Thaw(context.WithoutCancel(ctx))
		agent.Close()
		return nil, fmt.Errorf("%s %s: freeze its filesystem: %w", what, b.Name, err)
	}
	r.crashPoint(what, "frozen")
	return g, nil
}

// thaw ends the freeze and says how long it lasted.
func (g *frozenGuest) thaw(ctx context.Context) (time.Duration, error) {
	defer g.agent.Close()
	tctx, tcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer tcancel()
	th, err := g.agent.Thaw(tctx)
	frozen := time.Since(g.at)
	switch {
	case err != nil:
		return frozen, fmt.Errorf("%s %s: thaw its filesystem (the guest thaws by itself within %s): %w", g.what, g.b.Name, bracketLimit, err)
	case th.LeaseExpired:
		// Harmless here: the disk work happened with the vCPUs paused,
		// so the guest could not have run meanwhile.
		g.r.log.Debug("quiesce bracket: the guest's freeze lease ran out before the thaw", "box", g.b.ID)
	}
	return frozen, nil
}

// writableDiskIndex is the writable disk's place in VMSpec.Disks (see
// prepareGuest): after the image's root disk.
const writableDiskIndex = 1

// liveDiskSwitcher returns the VMM's disk switch, or an error saying that
// this VMM needs the box stopped for what.
func (r *Runtime) liveDiskSwitcher(ctx context.Context, b *model.Box, what string) (sdk.DiskSwitcher, error) {
	vmm, err := r.vmmOf(ctx, b)
	if err != nil {
		return nil, err
	}
	sw := sdk.DiskSwitcher(vmm)
	if !vmm.info.Capabilities.DiskSwitch {
		return nil, fmt.Errorf("%s %s: the VMM plugin %q cannot move a running VM to a new disk file, which a constant-time %s of a running box needs; stop the box first (boxctl stop %s): %w",
			what, b.Name, vmm.name, what, b.Name, ErrUnsupported)
	}
	return sw, nil
}

// liveDisk is what a running box's VM has open as its writable disk's top
// file, taken before the storage plugin works on the disk.
type liveDisk struct{ top os.FileInfo }

// openDisk records which file is the top of box b's writable disk now.
func (r *Runtime) openDisk(ctx context.Context, b *model.Box) (liveDisk, error) {
	spec, err := r.writableDiskSpec(ctx, b)
	if err != nil {
		return liveDisk{}, err
	}
	st, err := os.Stat(spec.Path)
	if err != nil {
		return liveDisk{}, fmt.Errorf("writable disk of %s: %w", b.Name, err)
	}
	return liveDisk{top: st}, nil
}

// switchWritable moves running box b's VM onto its writable disk's current
// top file if the storage plugin froze the file the VM had open (was) into
// a base and put a new overlay in its place; a disk the plugin left as it
// was (a clone that shares an existing base) needs nothing.
func (r *Runtime) switchWritable(ctx context.Context, b *model.Box, sw sdk.DiskSwitcher, vm sdk.VM, was liveDisk) error {
	spec, err := r.writableDiskSpec(ctx, b)
	if err != nil {
		return err
	}
	if st, err := os.Stat(spec.Path); err == nil && os.SameFile(st, was.top) {
		return nil
	}
	if err := sw.SwitchDisk(ctx, vm, writableDiskIndex, spec); err != nil {
		return fmt.Errorf("move the running VM to its new disk overlay %s: %w", spec.Path, err)
	}
	return nil
}

package core

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/boxctl/boxctl/core/boxstatus"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/monitor"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/internal/proc"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// DefaultStopTimeout is the grace period of a stop before it is forced.
const DefaultStopTimeout = 10 * time.Second

// StartOption tunes Start.
type StartOption func(*startOptions)

type startOptions struct {
	detach *bool
	cold   bool
	// restore is a checkpoint to start from (RestoreCheckpoint).
	restore *restoreFrom
}

// Detach overrides the box's detach setting for this start: a detached box
// keeps running after the starting process exits; otherwise the box's
// monitor stops it when the starting process exits.
func Detach(detach bool) StartOption {
	return func(o *startOptions) { o.detach = &detach }
}

// Cold boots the box's kernel even where a boot template could start it
// (a new box of an image whose template exists), and makes no template.
func Cold() StartOption {
	return func(o *startOptions) { o.cold = true }
}

// Start starts the box's VM and returns once it runs (and its guest agent
// answers). Starting a running box does nothing; starting a suspended box
// resumes it from its saved state, every process as it was. A new box
// starts from its image's boot template where there is one (see Cold),
// and its first boot makes one. On failure the box keeps its previous
// status, Error says what failed, and what the start made is cleaned up.
func (r *Runtime) Start(ctx context.Context, ref string, opts ...StartOption) error {
	if err := r.checkOpen(); err != nil {
		return err
	}
	var so startOptions
	for _, o := range opts {
		o(&so)
	}
	b, lock, err := r.lockAndLoad(ctx, ref)
	if err != nil {
		return err
	}
	defer lock.Release()
	if b.Status.Active() {
		if r.runAlive(ctx, b) {
			if b.PausedByIOError() {
				// Starting a box the hypervisor paused on a disk error
				// means "continue it", once the user freed space.
				return r.resumeLocked(ctx, b)
			}
			return nil
		}
		if b, err = r.markGone(ctx, b, "vm process vanished"); err != nil {
			return err
		}
	}
	return r.startLocked(ctx, b, so)
}

// startLocked starts stopped box b; the caller holds its lock.
func (r *Runtime) startLocked(ctx context.Context, b *model.Box, so startOptions) error {
	detached := b.Config.Detach
	if so.detach != nil {
		detached = *so.detach
	}
	rf := so.restore
	var suspended *model.Checkpoint
	if b.Status == model.StatusSuspended {
		cp, err := r.suspendedState(ctx, b)
		if err != nil {
			return err
		}
		suspended = &cp
		rf = &restoreFrom{state: cp.State, what: "its suspended state"}
	}
	var tp templatePlan
	if rf == nil && !so.cold {
		tp = r.planTemplate(ctx, b)
		rf = tp.restore
	}
	err := r.startRun(ctx, b, detached, rf, tp.restore == nil)
	if err != nil && tp.restore != nil && ctx.Err() == nil {
		// A template that cannot be restored is dropped; the box boots.
		r.log.Warn(fmt.Sprintf("the boot template of %s could not be used (%v); booting %s cold and making a new template", b.Config.Image, err, b.Name))
		r.dropTemplate(context.WithoutCancel(ctx), tp.template)
		cur, rerr := r.reload(ctx, b.ID)
		if rerr != nil {
			return rerr
		}
		tp = templatePlan{key: tp.key, make: true}
		err = r.startRun(ctx, cur, detached, nil, true)
	}
	if err != nil {
		if suspended != nil {
			return fmt.Errorf("%w; the box stays suspended (`boxctl stop %s` discards its saved state, and the next start boots it afresh)", err, b.Name)
		}
		return err
	}
	if suspended != nil {
		r.forgetCheckpoint(context.WithoutCancel(ctx), *suspended)
	}
	if tp.make {
		if err := r.makeTemplate(ctx, b.ID, tp.key); err != nil {
			r.log.Warn("could not make a boot template; the next box of this image boots cold", "image", b.Config.Image, "error", err)
		}
	}
	return nil
}

// startRun is one attempt to start b: a new run, launched (from rf when
// set). On failure the run is recorded as failed, and an auto-remove box is
// removed when final.
func (r *Runtime) startRun(ctx context.Context, b *model.Box, detached bool, rf *restoreFrom, final bool) error {
	vmmName, err := r.vmmNameOf(ctx, b)
	if err != nil {
		return fmt.Errorf("start %s: %w", b.Name, err)
	}
	run := &model.Run{ID: newID()[:16], Detached: detached, VMM: vmmName, StartedAt: time.Now().UTC()}
	if !detached {
		run.Owner = r.self
	}
	var conflict error
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		if conflict = volumeConflict(tx, b); conflict != nil {
			return conflict
		}
		var err error
		b, err = boxstatus.Start(tx, b.ID, run)
		return err
	})
	if conflict != nil && final {
		// A box that never started because of its volumes goes as any
		// box whose start failed (run --rm leaves nothing behind).
		if rerr := r.autoRemoveLocked(context.WithoutCancel(ctx), b); rerr != nil {
			r.log.Warn("auto-remove after a refused start", "box", b.ID, "error", rerr)
		}
	}
	if conflict != nil {
		return fmt.Errorf("start %s: %w", b.Name, conflict)
	}
	if err != nil {
		return err
	}
	if err := r.launch(ctx, b, run, rf); err != nil {
		ctx := context.WithoutCancel(ctx)
		_ = r.store.Update(ctx, func(tx *state.Tx) error {
			if _, err := boxstatus.StartFailed(tx, b.ID, run.ID, err); err != nil && !errors.Is(err, boxstatus.ErrSuperseded) {
				return err
			}
			return tx.AddCounter(CounterBoxesFailed, 1)
		})
		if final {
			cur, _ := r.reload(ctx, b.ID)
			if rerr := r.autoRemoveLocked(ctx, cur); rerr != nil {
				r.log.Warn("auto-remove after a failed start", "box", b.ID, "error", rerr)
			}
		}
		return fmt.Errorf("start %s: %w", b.Name, err)
	}
	return nil
}

func (r *Runtime) reload(ctx context.Context, id string) (*model.Box, error) {
	var b *model.Box
	err := r.store.View(ctx, func(tx *state.Tx) error {
		var err error
		b, err = tx.Box(id)
		return err
	})
	return b, err
}

// launch prepares the VM, has the VMM plugin plan it, and starts the box
// monitor, which starts the VM and reports when it is ready.
func (r *Runtime) launch(ctx context.Context, b *model.Box, run *model.Run, rf *restoreFrom) (err error) {
	id := b.ID
	if err := os.MkdirAll(r.paths.boxDir(id), 0o700); err != nil {
		return fmt.Errorf("box directory: %w", err)
	}
	// A guest start needs all three plugins: start them side by side (the
	// VMM is the box's own, which need not be the one configured now).
	var vmm boxVMM
	vmmStarted := make(chan error, 1)
	go func() {
		var err error
		vmm, err = r.vmmOf(ctx, b)
		vmmStarted <- err
	}()
	r.Prestart(ctx, sdk.RoleImages, sdk.RoleDisks)
	if err := <-vmmStarted; err != nil {
		return err
	}
	info := vmm.info
	spec := sdk.VMSpec{
		BoxID:     b.ID,
		VCPUs:     b.Config.CPUs,
		MemoryMiB: b.Config.MemoryMiB,
		RunDir:    r.paths.boxDir(b.ID),
	}
	if err := boxNetworkSpec(b.Config, &spec.Network); err != nil {
		return err
	}
	if len(spec.Network.Allow) > 0 && !info.Capabilities.NetworkAllow {
		return fmt.Errorf("start %s: the box has an allow-list (--allow-net), but VMM plugin %q does not enforce one (no %q capability) and would run it unconfined: use a VMM that does (qemu, libkrun) or recreate the box without --allow-net: %w",
			b.Name, info.Name, "network-allow", ErrUnsupported)
	}
	if err := r.prepareGuest(ctx, b, &spec); err != nil {
		return err
	}
	mounts, err := r.prepareMounts(ctx, b, &spec)
	if err != nil {
		return err
	}
	spec.KernelArgs = bootArgs(spec, hostnameOf(b), info.Capabilities.AgentTransport, mounts...)
	if spec.Sandbox, err = r.sandboxSpec(ctx, b, info); err != nil {
		return err
	}
	var verified <-chan error
	if rf != nil {
		if spec.Restore, err = r.restoreSpec(ctx, b, rf, spec); err != nil {
			return err
		}
		// The file's checksum is verified while the VM loads it: a damaged
		// file stops the start (and its VM) as soon as that is known.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		verified = r.verifyInBackground(b.ID, rf, cancel)
		vctx := ctx
		defer func() {
			// A step that failed because the damaged file cancelled it
			// reports the damage.
			if cause := context.Cause(vctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, context.DeadlineExceeded) {
				err = cause
			}
		}()
	}
	spawned := time.Now()
	plan, err := vmm.Plan(ctx, spec)
	if err != nil {
		return fmt.Errorf("plan the VM: %w", err)
	}
	if plan.Notice != "" {
		r.log.Info(plan.Notice)
	}
	l := &monitor.Launch{
		BoxID:       b.ID,
		RunID:       run.ID,
		Argv:        plan.Argv,
		Env:         plan.Env,
		Dir:         plan.Dir,
		Handle:      plan.Handle,
		AgentSocket: plan.AgentSocket,
		ConsoleLog:  plan.ConsoleLog,
		StateFile:   plan.StateFile,
		VMM:         vmm.name,
		Detached:    run.Detached,
		Owner:       run.Owner,
		Config:      string(r.cfg.Format()),
		PluginDirs:  r.pluginDirs,
		StopTimeout: DefaultStopTimeout,
		Health:      b.Config.Health,
		LogLevel:    r.cfg.LogLevel,
	}
	if rf != nil {
		l.Identity = &monitor.Identity{BoxID: b.ID, Hostname: hostnameOf(b)}
	}
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Box(b.ID)
		if err != nil {
			return err
		}
		if cur.Run == nil || cur.Run.ID != run.ID {
			return fmt.Errorf("another start replaced this one: %w", ErrInvalidState)
		}
		cur.Run.Handle = l.Handle
		cur.Run.AgentSocket = l.AgentSocket
		cur.Run.ConsoleLog = l.ConsoleLog
		cur.Run.StateFile = l.StateFile
		cur.Run.Accelerator = plan.Accelerator
		if cur.VMM == "" {
			cur.VMM = vmm.name
		}
		if rf != nil {
			cur.Run.RestoredFrom = rf.what
		}
		return tx.PutBox(cur)
	})
	if err != nil {
		return err
	}
	if err := monitor.WriteLaunch(r.paths.launchFile(b.ID), l); err != nil {
		return err
	}
	err = r.spawnMonitor(ctx, b, l)
	if rf != nil {
		if verr := <-verified; verr != nil {
			if err == nil {
				if _, serr := monitor.Stop(context.WithoutCancel(ctx), r.paths.monitorSocket(b.ID), 0); serr != nil {
					r.log.Warn("stop a VM restored from a damaged state", "box", b.ID, "error", serr)
				}
			}
			return verr
		}
		if err != nil {
			return fmt.Errorf("restore %s: %w", rf.what, err)
		}
	}
	if err != nil {
		return err
	}
	r.log.Debug("vm ready", "box", b.ID, "took", time.Since(spawned))
	return nil
}

// verifyInBackground verifies rf's state file's checksum (unless rf was
// verified just before) and sends the outcome on the channel returned; a
// damaged file cancels the start with the reason.
func (r *Runtime) verifyInBackground(id string, rf *restoreFrom, cancel context.CancelCauseFunc) <-chan error {
	out := make(chan error, 1)
	if rf.verified {
		out <- nil
		return out
	}
	go func() {
		start := time.Now()
		err := verifyChecksum(rf.state)
		if err != nil {
			err = fmt.Errorf("restore %s: %w", rf.what, err)
			cancel(err)
		}
		r.log.Debug("saved state verified", "box", id, "from", rf.what, "size", rf.state.Size, "took", time.Since(start), "error", err)
		out <- err
	}()
	return out
}

// bootArgs renders the guest boot contract for spec: the disks in spec
// order (vda is the image's root, vdb the box's writable disk), with a
// user-mode network its addresses, and the one agent transport the VMM
// connects over, and the box's mounts. The VMM appends them to the kernel
// command line as they are.
func bootArgs(spec sdk.VMSpec, hostname string, transport sdk.AgentTransport, mounts ...guestboot.Mount) []string {
	c := guestboot.Default()
	c.ForTransport(transport == sdk.AgentSerial, transport == sdk.AgentVsock)
	c.Hostname, c.BoxID = hostname, spec.BoxID
	for i, d := range spec.Disks {
		dev, err := guestboot.DeviceName(i)
		if err != nil {
			break // the VMM refuses the spec, naming the disk
		}
		switch d.Role {
		case sdk.DiskRoleImage:
			c.RootDev = dev
		case sdk.DiskRoleWritable:
			c.DataDev = dev
		}
	}
	if spec.Network.Mode == sdk.NetworkUser {
		c.UserNetwork()
	}
	c.Mounts = mounts
	return c.Args()
}

// vmRef names a run's VM to the VMM plugin.
func vmRef(run *model.Run) sdk.VM { return sdk.VM{Handle: run.Handle, PID: run.VM.PID} }

// spawnMonitor starts `boxctl monitor` for the run, detached in its own
// session, and waits for its ready line.
func (r *Runtime) spawnMonitor(ctx context.Context, b *model.Box, l *monitor.Launch) error {
	bin, err := r.findMonitorBinary()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(r.paths.monitorLog(b.ID), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open monitor log: %w", err)
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	cmd := exec.Command(bin, "monitor", "--home", r.paths.home, "--box", b.ID, "--run", l.RunID)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = os.Environ()
	if err := cmd.Start(); err != nil {
		pw.Close()
		return fmt.Errorf("start box monitor %s: %w", bin, err)
	}
	pw.Close()
	// Reap the monitor when it ends, should this process outlive it.
	r.monitors.Add(1)
	go func() {
		defer r.monitors.Done()
		_ = cmd.Wait()
	}()

	type result struct {
		ready monitor.Ready
		err   error
	}
	done := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(pr).ReadBytes('\n')
		if err != nil {
			done <- result{err: err}
			return
		}
		var rd monitor.Ready
		if err := json.Unmarshal(line, &rd); err != nil {
			done <- result{err: fmt.Errorf("bad ready line %q: %w", line, err)}
			return
		}
		done <- result{ready: rd}
	}()
	select {
	case <-ctx.Done():
		// The caller gave up: have the monitor stop the VM and exit.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		return fmt.Errorf("gave up waiting for the box to start: %w", ctx.Err())
	case res := <-done:
		// The VMM's own complaint (QEMU refusing 1TiB of memory, a port in
		// use) is in vm.log, not on the console, which is empty then.
		vmTail := r.logTail(filepath.Join(r.paths.boxDir(b.ID), "vm.log"))
		if res.err != nil {
			return fmt.Errorf("the box monitor exited before the box was ready%s%s%s", r.logTail(r.paths.monitorLog(b.ID)), consoleHint(l), vmTail)
		}
		if !res.ready.OK {
			return fmt.Errorf("%s%s%s", res.ready.Error, consoleHint(l), vmTail)
		}
		return nil
	}
}

func consoleHint(l *monitor.Launch) string {
	if l.ConsoleLog == "" {
		return ""
	}
	return " (console log: " + l.ConsoleLog + ")"
}

// logTail returns the last lines of a log file, formatted for an error.
func (r *Runtime) logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return "; " + path + " ends with:\n  " + strings.Join(lines, "\n  ")
}

// runAlive reports whether the box's current run still has a live VM.
func (r *Runtime) runAlive(ctx context.Context, b *model.Box) bool {
	if b.Run == nil {
		return false
	}
	if b.Run.VM.Alive() {
		return true
	}
	// Starting: the VM identity is recorded once it runs; until then the
	// monitor answers for the run.
	if _, _, err := monitor.Status(ctx, r.paths.monitorSocket(b.ID)); err == nil {
		return true
	}
	return false
}

// markGone records that a box's VM is gone without its monitor having
// recorded the exit, and returns the record.
func (r *Runtime) markGone(ctx context.Context, b *model.Box, reason string) (*model.Box, error) {
	_ = os.Remove(r.paths.pidFile(b.ID))
	var cur *model.Box
	err := r.store.Update(ctx, func(tx *state.Tx) error {
		var err error
		cur, err = boxstatus.Exit(tx, b.ID, "", &model.Exit{Code: -1, Reason: reason, At: time.Now().UTC()})
		return err
	})
	return cur, err
}

// Stop stops the box's VM: a graceful power-off first, forced after
// timeout (0 forces at once). Stopping a stopped box does nothing.
// Auto-remove boxes are removed afterwards.
func (r *Runtime) Stop(ctx context.Context, ref string, timeout time.Duration) error {
	info, err := r.GetInfo(ctx, ref)
	if err != nil {
		return err
	}
	return r.stop(ctx, info.ID, timeout)
}

func (r *Runtime) stop(ctx context.Context, id string, timeout time.Duration) error {
	lock, b, err := r.lockBox(ctx, id)
	if err != nil {
		return err
	}
	defer lock.Release() // removeLocked deletes the lock file with the box
	if b.Status == model.StatusSuspended {
		// Stopping a suspended box drops its saved processes: it boots
		// afresh at the next start.
		if err := r.discardSuspended(ctx, b); err != nil {
			return err
		}
		if b, err = r.reload(ctx, id); err != nil {
			return err
		}
	}
	if b, err = r.stopLocked(ctx, b, timeout); err != nil {
		return err
	}
	return r.autoRemoveLocked(ctx, b)
}

// autoRemoveLocked removes the box if it is an auto-remove (--rm) box whose
// VM is gone. It is the one place boxes are auto-removed: after a stop, a
// failed start, a VM that exited on its own (the monitor calls AutoRemove)
// and in recovery. The caller holds the box lock and passes the box's
// current record.
func (r *Runtime) autoRemoveLocked(ctx context.Context, b *model.Box) error {
	// A suspended box has not exited: its processes resume at the next start.
	if b == nil || !b.Config.AutoRemove || b.Status.Active() || b.Status == model.StatusSuspended {
		return nil
	}
	if err := r.removeLocked(ctx, b.ID); err != nil {
		return fmt.Errorf("auto-remove %s: %w", b.Name, err)
	}
	return nil
}

// stopLocked stops the VM of box b, whose lock the caller holds: through
// its monitor, or, when the monitor is gone, without it. It returns the
// box's record after the stop.
func (r *Runtime) stopLocked(ctx context.Context, b *model.Box, timeout time.Duration) (*model.Box, error) {
	if !b.Status.Active() || b.Run == nil {
		return b, nil
	}
	_, err := monitor.Stop(ctx, r.paths.monitorSocket(b.ID), timeout)
	// The monitor recorded the exit (or recorded it and went before it
	// answered).
	cur, rerr := r.reload(ctx, b.ID)
	if rerr != nil {
		return nil, rerr
	}
	if err == nil || !cur.Status.Active() {
		return cur, nil
	}
	if !errors.Is(err, monitor.ErrNoMonitor) && b.Run.Monitor.Alive() {
		return nil, fmt.Errorf("stop %s: %w", b.Name, err)
	}
	r.log.Debug("monitor gone; stopping the VM without it", "box", b.ID)
	if b.Run.VM.Alive() {
		if err := r.stopUnsupervised(ctx, b, timeout); err != nil {
			return nil, fmt.Errorf("stop %s: %w", b.Name, err)
		}
	}
	return r.markGone(ctx, b, "stopped (its monitor was gone)")
}

// stopUnsupervised stops a VM whose monitor is gone: a clean shutdown
// through the guest agent (it syncs and unmounts) within timeout, then the
// VMM's forced stop. The VMM's own graceful stop (an ACPI power-off) is not
// waited for when there is an agent: the boxctl guest shuts down through it.
func (r *Runtime) stopUnsupervised(ctx context.Context, b *model.Box, timeout time.Duration) error {
	vm := b.Run.VM
	if b.Run.AgentSocket == "" {
		return r.stopViaVMM(ctx, b, timeout)
	}
	if timeout > 0 && b.Status != model.StatusPaused {
		gctx, cancel := context.WithTimeout(ctx, timeout)
		err := GuestAgent().Shutdown(gctx, b.Run.AgentSocket)
		if err == nil {
			err = proc.WaitExit(gctx, vm)
		}
		cancel()
		if err == nil {
			return nil
		}
		r.log.Debug("clean shutdown through the guest agent failed; forcing", "box", b.ID, "error", err)
	}
	return r.stopViaVMM(ctx, b, 0)
}

// stopViaVMM stops a VM whose monitor is gone: graceful stop, wait, forced
// stop, wait, and SIGKILL as the last resort.
func (r *Runtime) stopViaVMM(ctx context.Context, b *model.Box, timeout time.Duration) error {
	vm := b.Run.VM
	vmm, err := r.vmmOf(ctx, b)
	if err != nil {
		r.log.Warn("vmm plugin unavailable; killing the VM process", "error", err)
		_ = syscall.Kill(vm.PID, syscall.SIGKILL)
		return waitGone(ctx, vm, 10*time.Second)
	}
	if timeout > 0 {
		if err := vmm.Stop(ctx, vmRef(b.Run), false); err != nil {
			r.log.Warn("graceful stop through the VMM failed", "error", err)
		}
		if waitGone(ctx, vm, timeout) == nil {
			return nil
		}
	}
	if err := vmm.Stop(ctx, vmRef(b.Run), true); err != nil {
		r.log.Warn("forced stop through the VMM failed", "error", err)
	}
	if waitGone(ctx, vm, 5*time.Second) == nil {
		return nil
	}
	if vm.Alive() {
		_ = syscall.Kill(vm.PID, syscall.SIGKILL)
	}
	return waitGone(ctx, vm, 5*time.Second)
}

func waitGone(ctx context.Context, id proc.Ident, d time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := proc.WaitExit(wctx, id); err != nil {
		return fmt.Errorf("vm process %d still runs after %s", id.PID, d)
	}
	return nil
}

// AutoRemove removes the box if it is an auto-remove box that is no longer
// active. The box monitor calls it after the VM exits on its own.
func (r *Runtime) AutoRemove(ctx context.Context, id string) error {
	b, lock, err := r.lockAndLoad(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lock.Release()
	return r.autoRemoveLocked(ctx, b)
}

package core

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/monitor"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/internal/proc"
)

// recover brings the home back to a consistent state when a runtime opens:
//
//   - box directories with no record are removed (a create that died);
//   - boxes marked for removal, and stopped auto-remove boxes, are removed;
//   - active boxes whose directory vanished are removed;
//   - active boxes whose VM process is gone (or whose PID now belongs to
//     another process, or the host rebooted) are marked Stopped and their
//     PID files deleted;
//   - lock files of boxes that no longer exist are deleted;
//   - interrupted imports are rolled back, and the temporary files of
//     exports and imports whose process died are deleted.
//
// It reads first and writes only when something needs fixing, and it
// leaves alone any box whose lock another process holds (that process is
// in the middle of changing it).
func (r *Runtime) recover(ctx context.Context) error {
	var attention []*model.Box
	var count int
	err := r.store.View(ctx, func(tx *state.Tx) error {
		var err error
		attention, err = tx.AttentionBoxes()
		count = tx.BoxCount()
		return err
	})
	if err != nil {
		return err
	}
	if err := r.removeOrphans(ctx, count); err != nil {
		return err
	}
	r.sweepWorkDirs()
	boot, _ := proc.BootID()
	for _, b := range attention {
		if r.runningUndisturbed(b, boot) {
			continue
		}
		r.recoverBox(ctx, b)
	}
	return nil
}

// runningUndisturbed reports, from the record as read without the box's
// lock, that recoverBox would find nothing to do: the box is running, no
// operation on it is pending, its directory is there and its VM process is
// alive on this boot (and not orphaned by both its owner and its monitor).
// Running boxes are always in the attention index, so this spares every
// command the lock and the second read per running box. A record that
// changes after it was read is another process's doing: that process holds
// the lock, and the next command's recovery sees the new record.
func (r *Runtime) runningUndisturbed(b *model.Box, boot string) bool {
	run := b.Run
	if b.Pending != "" || !b.Status.Active() || b.Status == model.StatusStarting || run == nil || boot == "" {
		return false
	}
	if run.VM.BootID != boot || run.Monitor.BootID != "" && run.Monitor.BootID != boot {
		return false
	}
	if !run.VM.Alive() {
		return false
	}
	if !run.Detached && !run.Owner.IsZero() && !run.Monitor.IsZero() && !run.Owner.Alive() && !run.Monitor.Alive() {
		return false
	}
	_, err := os.Stat(r.paths.boxDir(b.ID))
	return err == nil
}

// removeOrphans deletes box directories and lock files with no record.
//
// It runs on every command, so the common case must be cheap: every box has
// a directory, and a directory's link count is 2 plus its subdirectories,
// so one stat tells whether boxes/ holds exactly as many directories as the
// store holds boxes. Lock files outlive their box only when a create died
// between making them and committing (removal deletes the lock file in the
// transaction that deletes the record), which also leaves an orphan
// directory; so lock files are only looked at when directories are.
func (r *Runtime) removeOrphans(ctx context.Context, count int) error {
	if n, ok := subdirCount(r.paths.boxesDir()); ok && n == count {
		return nil
	}
	dirNames, err := readNames(r.paths.boxesDir())
	if err != nil {
		return err
	}
	lockNames, _ := readNames(filepath.Dir(r.paths.lockPath("x")))
	if len(dirNames) == count && len(lockNames) == count {
		return nil
	}
	var ids map[string]bool
	if err := r.store.View(ctx, func(tx *state.Tx) error {
		ids = tx.BoxIDs()
		return nil
	}); err != nil {
		return err
	}
	var dirs []string
	for _, name := range dirNames {
		if !ids[name] {
			dirs = append(dirs, name)
		}
	}
	var staleLocks []string
	for _, name := range lockNames {
		id, ok := strings.CutSuffix(name, ".lock")
		if ok && !ids[id] {
			staleLocks = append(staleLocks, id)
		}
	}
	if len(dirs) == 0 && len(staleLocks) == 0 {
		return nil
	}
	// Re-check under the write lock: creates make the directory and the
	// record in one write transaction, so none is half-done now.
	return r.store.Update(ctx, func(tx *state.Tx) error {
		current := tx.BoxIDs()
		for _, d := range dirs {
			if !current[d] {
				r.log.Info("recovery: removing box directory without a record", "dir", d)
				if err := os.RemoveAll(r.paths.boxDir(d)); err != nil {
					return err
				}
			}
		}
		for _, id := range staleLocks {
			if current[id] {
				continue
			}
			if l, ok, _ := lockfile.TryAcquire(r.paths.lockPath(id), false); ok {
				_ = l.Remove()
			}
		}
		return nil
	})
}

// recoverBox fixes one box that may need it. Errors are logged, not
// returned: one damaged box must not make the whole home unusable.
func (r *Runtime) recoverBox(ctx context.Context, b *model.Box) {
	lock, ok, err := lockfile.TryAcquire(r.paths.lockPath(b.ID), false)
	if err != nil || !ok {
		return // busy: another process is changing this box
	}
	b, err = r.reload(ctx, b.ID)
	if errors.Is(err, model.ErrNotFound) {
		// Removed meanwhile; the lock file may be one TryAcquire just made.
		_ = lock.Remove()
		return
	}
	defer lock.Release() // removeLocked deletes the lock file with the box
	if err != nil {
		return
	}
	log := r.log.With("box", b.ID, "name", b.Name)
	_, dirErr := os.Stat(r.paths.boxDir(b.ID))
	dirGone := errors.Is(dirErr, os.ErrNotExist)
	switch {
	case b.Pending == "removing":
		log.Info("recovery: finishing an interrupted removal")
		r.recoverRemove(ctx, b)
		return
	case b.Pending == pendingImport:
		// The import's disk and snapshots may be partly adopted: remove
		// whatever the storage plugin has under its disk ID with the record.
		log.Info("recovery: rolling back an interrupted import")
		b.DiskCreated = true
		r.recoverRemove(ctx, b)
		return
	case b.Pending == pendingForking:
		log.Info("recovery: removing a fork whose fork was interrupted")
		if b.Run != nil && b.Run.VM.Alive() {
			_ = r.stopViaVMM(ctx, b, 0)
		}
		b.DiskCreated = true
		r.recoverRemove(ctx, b)
		return
	case b.Pending == "cloning":
		// The disk copy may or may not have happened: remove whatever the
		// storage plugin has under the clone's disk ID with the record.
		log.Info("recovery: rolling back an interrupted clone")
		b.DiskCreated = true
		r.recoverRemove(ctx, b)
		return
	case strings.HasPrefix(b.Pending, pendingSnapshot) || b.Pending == pendingCloneSource:
		if b.Pending == pendingCloneSource {
			log.Info("recovery: a clone of this running box was interrupted")
			r.clearPending(ctx, b.ID)
		} else {
			log.Info("recovery: rolling back an interrupted snapshot", "snapshot", strings.TrimPrefix(b.Pending, pendingSnapshot))
			r.recoverSnapshot(ctx, b)
		}
		if b, err = r.reload(ctx, b.ID); err != nil {
			return
		}
		if b.Status.Active() && r.recoverRun(ctx, b) {
			if err := r.resyncLiveDisk(ctx, b); err != nil {
				log.Warn("recovery: move the running VM onto its disk's current overlay", "error", err)
			}
		}
		return
	case b.Pending == pendingSuspend || b.Pending == pendingFork ||
		strings.HasPrefix(b.Pending, pendingCheckpoint) || strings.HasPrefix(b.Pending, pendingTemplate):
		log.Info("recovery: an interrupted save of this box's memory", "operation", b.Pending)
		if b.Status.Active() && !r.recoverRun(ctx, b) {
			if b, err = r.reload(ctx, b.ID); err != nil {
				return
			}
		}
		r.recoverCapture(ctx, b)
		return
	case b.Status.Active() && dirGone:
		log.Info("recovery: removing an active box whose directory vanished")
		if b.Run != nil && b.Run.VM.Alive() {
			_ = r.stopViaVMM(ctx, b, 0)
		}
		r.recoverRemove(ctx, b)
		return
	case b.Status.Active():
		if r.recoverRun(ctx, b) {
			return
		}
		b, err = r.reload(ctx, b.ID)
		if err != nil {
			return
		}
	}
	if b.Config.AutoRemove && !b.Status.Active() {
		log.Info("recovery: removing a stopped auto-remove box")
		if err := r.autoRemoveLocked(ctx, b); err != nil {
			log.Warn("recovery: auto-remove", "error", err)
		}
	}
}

// recoverRun checks the processes behind an active box. It returns true
// when the run is alive (nothing to do).
func (r *Runtime) recoverRun(ctx context.Context, b *model.Box) bool {
	boot, _ := proc.BootID()
	reason := ""
	switch {
	case b.Run == nil:
		reason = "no run recorded"
	case b.Run.VM.BootID != "" && b.Run.VM.BootID != boot || b.Run.Monitor.BootID != "" && b.Run.Monitor.BootID != boot:
		reason = "host rebooted"
	case b.Run.VM.Alive() && !b.Run.Detached && !b.Run.Owner.IsZero() && !b.Run.Owner.Alive() && !b.Run.Monitor.IsZero() && !b.Run.Monitor.Alive():
		// The monitor that should have stopped this box when its owner
		// went is gone too: do its job.
		r.log.Info("recovery: stopping a box whose owner and monitor are gone", "box", b.ID)
		if err := r.stopUnsupervised(ctx, b, DefaultStopTimeout); err != nil {
			r.log.Warn("recovery: stop a box whose monitor died", "box", b.ID, "error", err)
			return true
		}
		reason = "its owner exited while its monitor was gone"
	case b.Run.VM.Alive():
		return true
	case b.Run.Monitor.Alive():
		// The VM has just ended and its monitor is recording how.
		return true
	case b.Status == model.StatusStarting && b.Run.Monitor.IsZero():
		// The monitor records its identity only once the VM is ready; ask
		// it directly.
		if _, _, err := monitor.Status(ctx, r.paths.monitorSocket(b.ID)); err == nil {
			return true
		}
		reason = "start was interrupted"
	default:
		reason = "vm process vanished"
	}
	r.log.Info("recovery: marking box stopped", "box", b.ID, "reason", reason)
	if _, err := r.markGone(ctx, b, reason); err != nil {
		r.log.Warn("recovery: mark stopped", "box", b.ID, "error", err)
	}
	return false
}

func (r *Runtime) recoverRemove(ctx context.Context, b *model.Box) {
	if b.DiskCreated {
		if err := r.releaseStorage(ctx, b); err != nil {
			r.log.Warn("recovery: remove disk", "box", b.ID, "error", err)
			return
		}
	}
	if err := r.removeLocked(ctx, b.ID); err != nil {
		r.log.Warn("recovery: remove box", "box", b.ID, "error", err)
	}
}

// readNames lists a directory's entry names without stat-ing them.
func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// subdirCount returns the number of subdirectories of dir from its link
// count, when the filesystem keeps one (ok is false otherwise, e.g. on
// filesystems that report 1 for large or all directories).
func subdirCount(dir string) (int, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil || st.Nlink < 2 {
		return 0, false
	}
	return int(st.Nlink) - 2, true
}

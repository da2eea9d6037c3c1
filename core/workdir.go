package core

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/boxctl/boxctl/internal/lockfile"
)

// Work directories hold the temporary files of exports and imports (a
// flattened disk, extracted archive members) under <home>/tmp, on the
// home's filesystem: the storage plugin adopts imported disks from there
// with a reflink or a copy, never across filesystems. Each is
// <home>/tmp/<op>-<random> with a lock file <op>-<random>.lock that its
// process holds, so recovery can delete the directories of processes that
// died (the lock is free) and leave live ones alone.

func (l layout) tmpDir() string { return filepath.Join(l.home, "tmp") }

// workDir is one operation's temporary directory.
type workDir struct {
	dir  string
	lock *lockfile.Lock
}

// newWorkDir makes a work directory for op ("export", "import"). The lock
// file comes first, so a directory without one is always debris.
func (r *Runtime) newWorkDir(ctx context.Context, op string) (*workDir, error) {
	base := r.paths.tmpDir()
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, fmt.Errorf("%s: create %s: %w", op, base, err)
	}
	name := op + "-" + newID()[:16]
	lock, err := lockfile.Acquire(ctx, filepath.Join(base, name+".lock"), false)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	dir := filepath.Join(base, name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		_ = lock.Remove()
		return nil, fmt.Errorf("%s: create %s: %w", op, dir, err)
	}
	return &workDir{dir: dir, lock: lock}, nil
}

// path names a file in the work directory.
func (w *workDir) path(name string) string { return filepath.Join(w.dir, name) }

// remove deletes the directory, then its lock file.
func (w *workDir) remove() {
	_ = os.RemoveAll(w.dir)
	_ = w.lock.Remove()
}

// sweepWorkDirs deletes the work directories of processes that died (their
// lock is free or gone). It reads one directory, usually empty.
func (r *Runtime) sweepWorkDirs() {
	base := r.paths.tmpDir()
	names, err := readNames(base)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			r.log.Warn("recovery: list temporary files", "dir", base, "error", err)
		}
		return
	}
	stems := map[string]bool{}
	for _, n := range names {
		stems[strings.TrimSuffix(n, ".lock")] = true
	}
	for stem := range stems {
		// Also for a directory listed without its lock file: a listing
		// taken while files are created may miss the lock file made first.
		l, free, err := lockfile.TryAcquire(filepath.Join(base, stem+".lock"), false)
		if err != nil || !free {
			continue
		}
		r.log.Info("recovery: removing the temporary files of an interrupted export or import", "dir", stem)
		_ = os.RemoveAll(filepath.Join(base, stem))
		_ = l.Remove()
	}
}

// Package lockfile provides advisory file locks (flock) that many boxctl
// processes use to coordinate: the state store's lock and the per-box
// lifecycle locks. Waiting honours a context, so no caller blocks forever.
package lockfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// ErrRemoved is returned by Acquire when the lock file was deleted while the
// caller waited for it: the thing it protected is gone.
var ErrRemoved = errors.New("lock file was removed")

// Lock is a held lock. Release it exactly once.
type Lock struct {
	f    *os.File
	path string
}

// Acquire takes an exclusive (or, with shared, a shared) lock on path,
// creating the file (and its directory) if needed. It waits until the lock
// is free or ctx ends. flock has no timeout of its own, so waiting polls
// with a short, growing interval; a waiter notices a released lock within a
// few milliseconds.
func Acquire(ctx context.Context, path string, shared bool) (*Lock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return acquire(ctx, path, shared, os.O_RDWR|os.O_CREATE)
}

// AcquireExisting is Acquire for a lock file that must already exist; it
// returns an error matching fs.ErrNotExist when it does not, and ErrRemoved
// when it is deleted while waiting.
func AcquireExisting(ctx context.Context, path string, shared bool) (*Lock, error) {
	return acquire(ctx, path, shared, os.O_RDWR)
}

func acquire(ctx context.Context, path string, shared bool, flags int) (*Lock, error) {
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	delay := 500 * time.Microsecond
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			// The file may have been removed (and maybe re-created) between
			// our open and our flock; then we hold a lock nobody else sees.
			if same, serr := samePath(f, path); serr != nil || !same {
				_ = f.Close()
				if serr != nil && !errors.Is(serr, os.ErrNotExist) {
					return nil, fmt.Errorf("lock %s: %w", path, serr)
				}
				if flags&os.O_CREATE != 0 {
					return acquire(ctx, path, shared, flags)
				}
				return nil, fmt.Errorf("lock %s: %w", path, ErrRemoved)
			}
			return &Lock{f: f, path: path}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: waited too long: %w", path, context.Cause(ctx))
		case <-time.After(delay):
		}
		if delay < 20*time.Millisecond {
			delay *= 2
		}
	}
}

func samePath(f *os.File, path string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		return false, err
	}
	if err := unix.Stat(path, &b); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, os.ErrNotExist
		}
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// TryAcquire is Acquire without waiting: ok is false when the lock is held
// elsewhere.
func TryAcquire(path string, shared bool) (l *Lock, ok bool, err error) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l, err = Acquire(ctx, path, shared)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return l, true, nil
}

// Release unlocks and closes the file.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor drops the flock
	l.f = nil
	return err
}

// Remove deletes the lock file while still holding the lock, then releases
// it. Waiters see ErrRemoved (AcquireExisting) or a fresh file (Acquire).
func (l *Lock) Remove() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := os.Remove(l.path)
	if rerr := l.Release(); err == nil {
		err = rerr
	}
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return err
}

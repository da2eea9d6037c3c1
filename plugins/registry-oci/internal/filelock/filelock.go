// Package filelock owns the cross-process advisory locks (flock(2)) that
// serialize work on the shared image cache: one lock file per blob digest or
// root disk, and a store-wide shared/exclusive lock that keeps garbage
// collection away from pulls in flight.
//
// flock locks belong to an open file description, so two goroutines of one
// process that each call Exclusive on the same path exclude each other just as
// two processes do. Lock files may be removed while held (UnlockAndRemove);
// acquirers detect that the path now names a different inode and retry, so
// removal never lets two holders in at once.
package filelock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Lock is a held lock. It is not safe for concurrent use.
type Lock struct {
	f    *os.File
	path string
}

// Exclusive blocks until it holds an exclusive lock on path (created if
// missing) or ctx is done.
func Exclusive(ctx context.Context, path string) (*Lock, error) {
	return acquire(ctx, path, unix.LOCK_EX)
}

// Shared blocks until it holds a shared lock on path or ctx is done.
func Shared(ctx context.Context, path string) (*Lock, error) {
	return acquire(ctx, path, unix.LOCK_SH)
}

// TryExclusive takes an exclusive lock without waiting. It returns (nil, nil)
// when someone else holds the lock.
func TryExclusive(path string) (*Lock, error) {
	l, busy, err := try(path, unix.LOCK_EX)
	if busy {
		return nil, nil
	}
	return l, err
}

// Path returns the lock file's path.
func (l *Lock) Path() string { return l.path }

// Unlock releases the lock.
func (l *Lock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	// Closing the descriptor releases the flock.
	err := l.f.Close()
	l.f = nil
	return err
}

// UnlockAndRemove deletes the lock file and releases the lock. Waiters that
// opened the old file notice the removal and start over on a fresh file.
func (l *Lock) UnlockAndRemove() error {
	if l == nil || l.f == nil {
		return nil
	}
	rmErr := os.Remove(l.path)
	if errors.Is(rmErr, os.ErrNotExist) {
		rmErr = nil
	}
	return errors.Join(rmErr, l.Unlock())
}

func acquire(ctx context.Context, path string, how int) (*Lock, error) {
	delay := 2 * time.Millisecond
	for {
		l, busy, err := try(path, how)
		if err != nil {
			return nil, err
		}
		if !busy {
			return l, nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-t.C:
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}

// try makes one attempt. busy reports that another holder has the lock or
// that the file was replaced under us (the caller simply tries again).
func try(path string, how int) (l *Lock, busy bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("open lock file: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err == unix.EWOULDBLOCK {
		f.Close()
		return nil, true, nil
	}
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	// The previous holder may have removed the file after we opened it; a lock
	// on an unlinked inode protects nothing.
	var held, now unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &held); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("stat lock %s: %w", path, err)
	}
	if err := unix.Stat(path, &now); err != nil || now.Ino != held.Ino || now.Dev != held.Dev {
		f.Close()
		return nil, true, nil
	}
	return &Lock{f: f, path: path}, false, nil
}

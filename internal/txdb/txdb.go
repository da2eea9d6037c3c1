// Package txdb opens a bbolt database for the length of one transaction,
// under a lock file taken shared for reads and exclusive for writes. Many
// processes can share the file this way, none holds it across a long
// operation, and a reader never polls bbolt's own file lock.
package txdb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/internal/lockfile"
)

// ErrNoDatabase is returned by View when the database file does not exist
// yet (nothing was ever written).
var ErrNoDatabase = errors.New("database does not exist yet")

// DB is a database file used one transaction at a time.
type DB struct {
	// Path is the bbolt file; LockPath the lock file guarding it.
	Path     string
	LockPath string
	// Timeout bounds the wait for the lock.
	Timeout time.Duration
	// What names the database in errors ("state store", ...).
	What string
}

// View runs fn in a read-only transaction.
func (d *DB) View(ctx context.Context, fn func(*bolt.Tx) error) error {
	return d.run(ctx, false, fn)
}

// Update runs fn in a read-write transaction; it commits when fn returns
// nil. The file is created when missing.
func (d *DB) Update(ctx context.Context, fn func(*bolt.Tx) error) error {
	return d.run(ctx, true, fn)
}

func (d *DB) run(ctx context.Context, write bool, fn func(*bolt.Tx) error) error {
	lctx, cancel := context.WithTimeout(ctx, d.Timeout)
	defer cancel()
	lock, err := lockfile.Acquire(lctx, d.LockPath, !write)
	if err != nil {
		return fmt.Errorf("%s %s is busy (another process holds it): %w", d.What, d.Path, err)
	}
	defer lock.Release()
	if !write {
		if _, err := os.Stat(d.Path); errors.Is(err, os.ErrNotExist) {
			return ErrNoDatabase
		}
	}
	db, err := bolt.Open(d.Path, 0o600, &bolt.Options{Timeout: d.Timeout, ReadOnly: !write})
	if err != nil {
		return fmt.Errorf("open %s %s: %w", d.What, d.Path, err)
	}
	defer db.Close()
	if write {
		if err := db.Update(fn); err != nil {
			return err
		}
		reserve(d.Path)
		return nil
	}
	return db.View(fn)
}

// reserveSlack is how much space beyond the database's current size is
// kept allocated for it.
const reserveSlack = 1 << 20

// reserve keeps disk space allocated for the database file and some room
// to grow. bbolt grows its file by truncating it larger, which leaves a
// hole: on a full filesystem, the next commit that writes there fails.
// That is exactly when the store must still work — to record that a box's
// VM was stopped because the disk is full. Best effort: it does nothing
// where the filesystem cannot preallocate or has no room.
func reserve(path string) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer f.Close()
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil {
		return
	}
	want := st.Size + reserveSlack
	if st.Blocks*512 >= want {
		return
	}
	_ = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, want)
}

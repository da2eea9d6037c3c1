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

	"github.com/boxctl/boxctl/core/lockfile"
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
		return db.Update(fn)
	}
	return db.View(fn)
}

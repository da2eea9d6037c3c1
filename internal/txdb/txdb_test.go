package txdb

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestViewBeforeAnyWriteAndConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	db := &DB{Path: filepath.Join(dir, "x.db"), LockPath: filepath.Join(dir, "x.lock"), Timeout: 10 * time.Second, What: "test db"}
	ctx := context.Background()
	if err := db.View(ctx, func(*bolt.Tx) error { return nil }); !errors.Is(err, ErrNoDatabase) {
		t.Fatalf("view of a missing database: %v", err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			other := *db // as another process would: its own handle
			for j := 0; j < 20; j++ {
				err := other.Update(ctx, func(tx *bolt.Tx) error {
					b, err := tx.CreateBucketIfNotExists([]byte("b"))
					if err != nil {
						return err
					}
					n := 0
					if v := b.Get([]byte("n")); v != nil {
						n = int(v[0])<<8 | int(v[1])
					}
					n++
					return b.Put([]byte("n"), []byte{byte(n >> 8), byte(n)})
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	err := db.View(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte("b")).Get([]byte("n"))
		if n := int(v[0])<<8 | int(v[1]); n != 160 {
			t.Errorf("n = %d, want 160", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

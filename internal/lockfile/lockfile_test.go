package lockfile

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestExclusiveLockSerializes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := Acquire(context.Background(), path, false)
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for {
				m := maxInside.Load()
				if n <= m || maxInside.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(2 * time.Millisecond)
			inside.Add(-1)
			if err := l.Release(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := maxInside.Load(); got != 1 {
		t.Fatalf("%d holders at once, want 1", got)
	}
}

func TestSharedLocksCoexistAndExcludeWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	a, err := Acquire(context.Background(), path, true)
	if err != nil {
		t.Fatal(err)
	}
	b, ok, err := TryAcquire(path, true)
	if err != nil || !ok {
		t.Fatalf("second shared lock: ok=%v err=%v", ok, err)
	}
	if _, ok, err := TryAcquire(path, false); err != nil || ok {
		t.Fatalf("exclusive lock while shared held: ok=%v err=%v", ok, err)
	}
	_ = a.Release()
	_ = b.Release()
	c, ok, err := TryAcquire(path, false)
	if err != nil || !ok {
		t.Fatalf("exclusive after release: ok=%v err=%v", ok, err)
	}
	_ = c.Release()
}

func TestAcquireHonoursContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	held, err := Acquire(context.Background(), path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Acquire(ctx, path, false); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want deadline exceeded", err)
	}
}

func TestRemoveWakesWaitersWithErrRemoved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	held, err := Acquire(context.Background(), path, false)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		l, err := AcquireExisting(context.Background(), path, false)
		if err == nil {
			_ = l.Release()
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := held.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrRemoved) {
		t.Fatalf("waiter got %v, want ErrRemoved", err)
	}
	if _, err := AcquireExisting(context.Background(), path, false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("AcquireExisting on removed file: %v", err)
	}
}

// A waiter that may create the file ends up holding the lock on a fresh
// file, never on the removed one: removal must not let two holders in.
func TestRemoveWhileHeldNeverAdmitsTwoHolders(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	held, err := Acquire(context.Background(), path, false)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *Lock, 1)
	go func() {
		l, err := Acquire(context.Background(), path, false)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	time.Sleep(20 * time.Millisecond)
	if err := held.Remove(); err != nil {
		t.Fatal(err)
	}
	waiter := <-got
	defer waiter.Release()
	// The waiter holds the file now at the path: a third party is locked out.
	if _, ok, err := TryAcquire(path, false); err != nil || ok {
		t.Fatalf("a third holder got in after the removal: ok=%v err=%v", ok, err)
	}
}

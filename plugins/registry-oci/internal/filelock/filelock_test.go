package filelock

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestExclusionAndRemoval(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.lock")
	var inside, max atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			l, err := Exclusive(context.Background(), p)
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			if n > max.Load() {
				max.Store(n)
			}
			time.Sleep(5 * time.Millisecond)
			inside.Add(-1)
			// Half the holders delete the file on the way out.
			if i%2 == 0 {
				l.UnlockAndRemove()
			} else {
				l.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if max.Load() != 1 {
		t.Errorf("%d holders at once", max.Load())
	}
}

func TestSharedAndTry(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gc.lock")
	a, err := Shared(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Shared(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := TryExclusive(p); err != nil || l != nil {
		t.Fatalf("exclusive while shared held: %v %v", l, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Exclusive(ctx, p); err == nil {
		t.Fatal("exclusive acquired while shared held")
	}
	a.Unlock()
	b.Unlock()
	l, err := TryExclusive(p)
	if err != nil || l == nil {
		t.Fatalf("exclusive after release: %v %v", l, err)
	}
	l.Unlock()
}

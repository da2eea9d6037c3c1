package state

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/boxctl/boxctl/core/model"
)

func openStore(t *testing.T) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func putBox(t *testing.T, s *Store, b *model.Box) {
	t.Helper()
	if err := s.Update(context.Background(), func(tx *Tx) error { return tx.PutBox(b) }); err != nil {
		t.Fatal(err)
	}
}

func TestResolveByIDNameAndPrefix(t *testing.T) {
	s, _ := openStore(t)
	now := time.Now()
	putBox(t, s, &model.Box{ID: "abc123", Name: "web", CreatedAt: now, Status: model.StatusConfigured})
	putBox(t, s, &model.Box{ID: "abd456", Name: "db", CreatedAt: now.Add(time.Second), Status: model.StatusConfigured})
	ctx := context.Background()
	for ref, want := range map[string]string{"abc123": "abc123", "web": "abc123", "db": "abd456", "abc": "abc123", "abd4": "abd456"} {
		err := s.View(ctx, func(tx *Tx) error {
			b, err := tx.ResolveBox(ref)
			if err != nil {
				return err
			}
			if b.ID != want {
				return fmt.Errorf("resolve %q = %s, want %s", ref, b.ID, want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := s.View(ctx, func(tx *Tx) error { _, err := tx.ResolveBox("ab"); return err })
	if !errors.Is(err, model.ErrAmbiguous) {
		t.Fatalf("ambiguous prefix: got %v", err)
	}
	err = s.View(ctx, func(tx *Tx) error { _, err := tx.ResolveBox("zzz"); return err })
	if !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("unknown ref: got %v", err)
	}
}

func TestNameShadowsID(t *testing.T) {
	s, _ := openStore(t)
	const id = "0123456789abcdef0123456789abcdef"
	putBox(t, s, &model.Box{ID: id, Name: "web"})
	_ = s.View(context.Background(), func(tx *Tx) error {
		for name, want := range map[string]string{
			id:                       id, // the full ID
			id[:ShortIDLen]:          id, // the short ID ls shows
			id[:20]:                  id, // more of the ID than the short one
			id[:ShortIDLen-1]:        "", // shorter prefixes stay names, as in Docker
			"0123456789abcdeX":       "",
			"web":                    "",
			id + "0":                 "",
			"fedcba9876543210fedcba": "",
		} {
			if got := tx.NameShadowsID(name); got != want {
				t.Errorf("NameShadowsID(%q) = %q, want %q", name, got, want)
			}
		}
		return nil
	})
}

func TestNameIsUniqueAndFollowsRenameAndDelete(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	putBox(t, s, &model.Box{ID: "a1", Name: "web"})
	err := s.Update(ctx, func(tx *Tx) error { return tx.PutBox(&model.Box{ID: "b2", Name: "web"}) })
	if !errors.Is(err, model.ErrAlreadyExists) {
		t.Fatalf("duplicate name: got %v", err)
	}
	putBox(t, s, &model.Box{ID: "a1", Name: "web2"})
	putBox(t, s, &model.Box{ID: "b2", Name: "web"}) // old name freed by rename
	if err := s.Update(ctx, func(tx *Tx) error { return tx.DeleteBox("b2") }); err != nil {
		t.Fatal(err)
	}
	_ = s.View(ctx, func(tx *Tx) error {
		if id := tx.NameTaken("web"); id != "" {
			t.Errorf("name still held by %s after delete", id)
		}
		return nil
	})
}

func TestBoxesNewestFirst(t *testing.T) {
	s, _ := openStore(t)
	base := time.Now()
	for i := 0; i < 5; i++ {
		putBox(t, s, &model.Box{ID: fmt.Sprintf("id%d", 4-i), Name: fmt.Sprintf("n%d", i), CreatedAt: base.Add(time.Duration(i) * time.Second)})
	}
	_ = s.View(context.Background(), func(tx *Tx) error {
		boxes, err := tx.Boxes()
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(boxes); i++ {
			if boxes[i].CreatedAt.After(boxes[i-1].CreatedAt) {
				t.Fatalf("not newest first at %d", i)
			}
		}
		if boxes[0].Name != "n4" {
			t.Fatalf("first is %s, want n4", boxes[0].Name)
		}
		return nil
	})
}

func TestAttentionIndexFollowsStatus(t *testing.T) {
	s, _ := openStore(t)
	b := &model.Box{ID: "a", Name: "a", Status: model.StatusRunning}
	putBox(t, s, b)
	count := func() int {
		var n int
		_ = s.View(context.Background(), func(tx *Tx) error {
			bs, err := tx.AttentionBoxes()
			n = len(bs)
			return err
		})
		return n
	}
	if count() != 1 {
		t.Fatal("running box not in attention index")
	}
	b.Status = model.StatusStopped
	putBox(t, s, b)
	if count() != 0 {
		t.Fatal("stopped box still in attention index")
	}
	b.Config.AutoRemove = true
	putBox(t, s, b)
	if count() != 1 {
		t.Fatal("stopped auto-remove box not in attention index")
	}
}

func TestRefsAndCountersPersistAcrossStores(t *testing.T) {
	s, dir := openStore(t)
	ctx := context.Background()
	err := s.Update(ctx, func(tx *Tx) error {
		if err := tx.Ref("image:sha256:x", "a"); err != nil {
			return err
		}
		if err := tx.Ref("image:sha256:x", "b"); err != nil {
			return err
		}
		return tx.AddCounter("boxes_created", 2)
	})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	err = s2.Update(ctx, func(tx *Tx) error {
		if n := tx.Counter("boxes_created"); n != 2 {
			return fmt.Errorf("counter = %d, want 2", n)
		}
		orphaned, err := tx.UnrefAll("a")
		if err != nil || len(orphaned) != 0 {
			return fmt.Errorf("unref a: %v %v", orphaned, err)
		}
		orphaned, err = tx.UnrefAll("b")
		if err != nil || len(orphaned) != 1 || orphaned[0] != "image:sha256:x" {
			return fmt.Errorf("unref b: %v %v", orphaned, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentUpdatesLoseNothing(t *testing.T) {
	_, dir := openStore(t)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(context.Background(), dir) // one store per goroutine, as separate processes would
			if err != nil {
				t.Error(err)
				return
			}
			for j := 0; j < 25; j++ {
				if err := s.Update(context.Background(), func(tx *Tx) error { return tx.AddCounter("n", 1) }); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	s, _ := Open(context.Background(), dir)
	_ = s.View(context.Background(), func(tx *Tx) error {
		if n := tx.Counter("n"); n != 200 {
			t.Errorf("counter = %d, want 200", n)
		}
		return nil
	})
}

func TestNewerSchemaIsRefused(t *testing.T) {
	_, dir := openStore(t)
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint64(nil, SchemaVersion+1))
	})
	_ = db.Close()
	if _, err := Open(context.Background(), dir); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("got %v, want ErrSchemaTooNew", err)
	}
}

func TestMigrationsRunInOrder(t *testing.T) {
	// A database written at version 1 with the current code is current; the
	// migration list must be exactly SchemaVersion-1 long so every version
	// has its step.
	if len(migrations) != SchemaVersion-1 {
		t.Fatalf("%d migrations for schema %d", len(migrations), SchemaVersion)
	}
}

func TestSnapshotsRemovedWithBox(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	putBox(t, s, &model.Box{ID: "a", Name: "a"})
	err := s.Update(ctx, func(tx *Tx) error {
		if err := tx.PutSnapshot(Snapshot{BoxID: "a", Name: "s1", CreatedAt: time.Now()}); err != nil {
			return err
		}
		return tx.DeleteBox("a")
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.View(ctx, func(tx *Tx) error {
		snaps, _ := tx.Snapshots("a")
		if len(snaps) != 0 {
			t.Errorf("snapshots left after box delete: %v", snaps)
		}
		return nil
	})
}

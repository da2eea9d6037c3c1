package state

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/boxctl/boxctl/core/model"
)

// TestVolumeRecords: volumes are stored, listed by name, are seen by another
// opening of the store and are deleted.
func TestVolumeRecords(t *testing.T) {
	ctx := context.Background()
	s, dir := openStore(t)
	at := time.Unix(1700000000, 0).UTC()
	for _, v := range []model.Volume{{Name: "b", DiskID: "vol2", Size: 2 << 30, CreatedAt: at}, {Name: "a", DiskID: "vol1", Size: 1 << 30, CreatedAt: at}} {
		if err := s.Update(ctx, func(tx *Tx) error { return tx.PutVolume(v) }); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(ctx, dir) // another process's view
	if err != nil {
		t.Fatal(err)
	}
	err = s.View(ctx, func(tx *Tx) error {
		vs, err := tx.Volumes()
		if err != nil {
			return err
		}
		if len(vs) != 2 || vs[0].Name != "a" || vs[1] != (model.Volume{Name: "b", DiskID: "vol2", Size: 2 << 30, CreatedAt: at}) {
			t.Errorf("volumes %+v", vs)
		}
		_, err = tx.Volume("c")
		if !errors.Is(err, model.ErrNotFound) {
			t.Errorf("missing volume: %v, want ErrNotFound", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx *Tx) error { return tx.DeleteVolume("a") }); err != nil {
		t.Fatal(err)
	}
	_ = s.View(ctx, func(tx *Tx) error {
		if _, err := tx.Volume("a"); !errors.Is(err, model.ErrNotFound) {
			t.Errorf("deleted volume: %v", err)
		}
		return nil
	})
}

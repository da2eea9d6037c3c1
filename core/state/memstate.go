package state

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/boxctl/boxctl/core/model"
)

// Checkpoint and template records are JSON: there are few of them, and
// nothing lists them in bulk on a hot path.

func checkpointKey(boxID, name string) []byte { return []byte(boxID + baseRefSep + name) }

// PutCheckpoint records a checkpoint (or a suspended box's state).
func (tx *Tx) PutCheckpoint(c model.Checkpoint) error {
	v, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return tx.btx.Bucket(bucketCheckpoints).Put(checkpointKey(c.BoxID, c.Name), v)
}

// Checkpoint returns box boxID's checkpoint name, or model.ErrNotFound.
func (tx *Tx) Checkpoint(boxID, name string) (model.Checkpoint, error) {
	var c model.Checkpoint
	v := tx.btx.Bucket(bucketCheckpoints).Get(checkpointKey(boxID, name))
	if v == nil {
		return c, fmt.Errorf("checkpoint %q of box %s: %w", name, short(boxID), model.ErrNotFound)
	}
	if err := json.Unmarshal(v, &c); err != nil {
		return c, fmt.Errorf("decode checkpoint %q of box %s: %w", name, short(boxID), err)
	}
	return c, nil
}

// DeleteCheckpoint removes a checkpoint record.
func (tx *Tx) DeleteCheckpoint(boxID, name string) error {
	return tx.btx.Bucket(bucketCheckpoints).Delete(checkpointKey(boxID, name))
}

// Checkpoints lists box boxID's checkpoint records, oldest first.
func (tx *Tx) Checkpoints(boxID string) ([]model.Checkpoint, error) {
	var out []model.Checkpoint
	prefix := []byte(boxID + baseRefSep)
	c := tx.btx.Bucket(bucketCheckpoints).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var cp model.Checkpoint
		if err := json.Unmarshal(v, &cp); err != nil {
			return nil, fmt.Errorf("decode checkpoint %q: %w", k, err)
		}
		out = append(out, cp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

func (tx *Tx) deleteCheckpointsOf(boxID string) error {
	cps, err := tx.Checkpoints(boxID)
	if err != nil {
		return err
	}
	for _, c := range cps {
		if err := tx.DeleteCheckpoint(boxID, c.Name); err != nil {
			return err
		}
	}
	return nil
}

// PutTemplate records a boot template.
func (tx *Tx) PutTemplate(t model.Template) error {
	v, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return tx.btx.Bucket(bucketTemplates).Put([]byte(t.Key), v)
}

// Template returns the boot template with key, or model.ErrNotFound.
func (tx *Tx) Template(key string) (model.Template, error) {
	var t model.Template
	v := tx.btx.Bucket(bucketTemplates).Get([]byte(key))
	if v == nil {
		return t, fmt.Errorf("boot template %s: %w", key, model.ErrNotFound)
	}
	if err := json.Unmarshal(v, &t); err != nil {
		return t, fmt.Errorf("decode boot template %s: %w", key, err)
	}
	return t, nil
}

// DeleteTemplate removes a boot template record.
func (tx *Tx) DeleteTemplate(key string) error {
	return tx.btx.Bucket(bucketTemplates).Delete([]byte(key))
}

// Templates lists every boot template record.
func (tx *Tx) Templates() ([]model.Template, error) {
	var out []model.Template
	err := tx.btx.Bucket(bucketTemplates).ForEach(func(k, v []byte) error {
		var t model.Template
		if err := json.Unmarshal(v, &t); err != nil {
			return fmt.Errorf("decode boot template %q: %w", k, err)
		}
		out = append(out, t)
		return nil
	})
	return out, err
}

// PutVolume records a named volume.
func (tx *Tx) PutVolume(v model.Volume) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.btx.Bucket(bucketVolumes).Put([]byte(v.Name), b)
}

// Volume returns the named volume, or model.ErrNotFound.
func (tx *Tx) Volume(name string) (model.Volume, error) {
	var v model.Volume
	b := tx.btx.Bucket(bucketVolumes).Get([]byte(name))
	if b == nil {
		return v, fmt.Errorf("volume %s: %w", name, model.ErrNotFound)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("decode volume %s: %w", name, err)
	}
	return v, nil
}

// DeleteVolume removes a volume record.
func (tx *Tx) DeleteVolume(name string) error {
	return tx.btx.Bucket(bucketVolumes).Delete([]byte(name))
}

// Volumes lists every volume record, by name.
func (tx *Tx) Volumes() ([]model.Volume, error) {
	var out []model.Volume
	err := tx.btx.Bucket(bucketVolumes).ForEach(func(k, b []byte) error {
		var v model.Volume
		if err := json.Unmarshal(b, &v); err != nil {
			return fmt.Errorf("decode volume %q: %w", k, err)
		}
		out = append(out, v)
		return nil
	})
	return out, err
}

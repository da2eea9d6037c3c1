package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/boxctl/boxctl/internal/txdb"
)

// schemaVersion is the metadata schema this code reads and writes.
const schemaVersion = 1

var (
	bucketMeta    = []byte("meta")
	bucketDisks   = []byte("disks")
	bucketBases   = []byte("bases")
	bucketJournal = []byte("journal")
	keySchema     = []byte("schema_version")
)

// errNoDatabase: the metadata file does not exist yet (read before the
// first write).
var errNoDatabase = errors.New("no metadata database yet")

// Base kinds.
const (
	kindBlank  = "blank"
	kindFrozen = "frozen"
)

// diskRecord is one disk: the file disks/<ID>.qcow2 overlaying Base.
type diskRecord struct {
	ID string `json:"id"`
	// Base is the base the overlay backs onto; "" for a standalone
	// (imported) disk.
	Base      string           `json:"base,omitempty"`
	CreatedAt int64            `json:"created_at"`
	Snapshots []snapshotRecord `json:"snapshots,omitempty"`
	// OriginDisk and OriginSnapshot say what the disk was cloned from.
	OriginDisk     string `json:"origin_disk,omitempty"`
	OriginSnapshot string `json:"origin_snapshot,omitempty"`
}

func (d *diskRecord) snapshot(name string) (int, *snapshotRecord) {
	for i := range d.Snapshots {
		if d.Snapshots[i].Name == name {
			return i, &d.Snapshots[i]
		}
	}
	return -1, nil
}

// snapshotRecord is a named frozen state of a disk.
type snapshotRecord struct {
	Name      string `json:"name"`
	Base      string `json:"base"`
	CreatedAt int64  `json:"created_at"`
	// Size is the guest data the snapshot's base holds on its own.
	Size        uint64 `json:"size"`
	VirtualSize uint64 `json:"virtual_size"`
}

// baseRecord is an immutable file other files back onto.
type baseRecord struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"`
	Parent string `json:"parent,omitempty"`
	Refs   int64  `json:"refs"`
}

// metaDB is the metadata database. It is opened only for the length of one
// transaction under a lock file (core/txdb), as the core's state store is:
// several plugin processes (one per boxctl process) share it, and none
// holds it across a long operation.
type metaDB struct {
	db txdb.DB
}

func newMetaDB(dir string, timeout time.Duration) *metaDB {
	return &metaDB{db: txdb.DB{
		Path:     filepath.Join(dir, "meta.db"),
		LockPath: filepath.Join(dir, "meta.lock"),
		Timeout:  timeout,
		What:     "storage metadata",
	}}
}

func (m *metaDB) view(ctx context.Context, fn func(*tx) error) error {
	return m.run(ctx, false, fn)
}

func (m *metaDB) update(ctx context.Context, fn func(*tx) error) error {
	return m.run(ctx, true, fn)
}

func (m *metaDB) run(ctx context.Context, write bool, fn func(*tx) error) error {
	body := func(btx *bolt.Tx) error {
		t := &tx{b: btx}
		if err := t.checkSchema(m.db.Path); err != nil {
			return err
		}
		return fn(t)
	}
	if write {
		return m.db.Update(ctx, body)
	}
	err := m.db.View(ctx, body)
	if errors.Is(err, txdb.ErrNoDatabase) {
		return errNoDatabase
	}
	return err
}

// init creates the buckets and the schema version of a new database.
func (m *metaDB) init(ctx context.Context) error {
	return m.db.Update(ctx, func(btx *bolt.Tx) error {
		meta, err := btx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keySchema); v != nil {
			if got := binary.BigEndian.Uint64(v); got != schemaVersion {
				return fmt.Errorf("storage metadata %s has schema version %d, this plugin understands %d; use a matching plugin version", m.db.Path, got, schemaVersion)
			}
		}
		for _, b := range [][]byte{bucketDisks, bucketBases, bucketJournal} {
			if _, err := btx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, schemaVersion))
	})
}

// tx is one metadata transaction.
type tx struct{ b *bolt.Tx }

func (t *tx) checkSchema(path string) error {
	meta := t.b.Bucket(bucketMeta)
	if meta == nil {
		return errNoDatabase
	}
	v := meta.Get(keySchema)
	if len(v) != 8 || binary.BigEndian.Uint64(v) != schemaVersion {
		return fmt.Errorf("storage metadata %s has an unknown schema version; use a matching plugin version", path)
	}
	return nil
}

func getJSON[T any](b *bolt.Bucket, key string) (*T, error) {
	v := b.Get([]byte(key))
	if v == nil {
		return nil, nil
	}
	out := new(T)
	if err := json.Unmarshal(v, out); err != nil {
		return nil, fmt.Errorf("decode metadata record %q: %w", key, err)
	}
	return out, nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}

func forEachJSON[T any](b *bolt.Bucket, fn func(*T) error) error {
	return b.ForEach(func(k, v []byte) error {
		out := new(T)
		if err := json.Unmarshal(v, out); err != nil {
			return fmt.Errorf("decode metadata record %q: %w", k, err)
		}
		return fn(out)
	})
}

// disk returns the record of id, or nil.
func (t *tx) disk(id string) (*diskRecord, error) {
	return getJSON[diskRecord](t.b.Bucket(bucketDisks), id)
}

func (t *tx) putDisk(d *diskRecord) error { return putJSON(t.b.Bucket(bucketDisks), d.ID, d) }

func (t *tx) deleteDisk(id string) error { return t.b.Bucket(bucketDisks).Delete([]byte(id)) }

func (t *tx) disks() ([]*diskRecord, error) {
	var out []*diskRecord
	err := forEachJSON(t.b.Bucket(bucketDisks), func(d *diskRecord) error {
		out = append(out, d)
		return nil
	})
	return out, err
}

// base returns the record of id, or nil.
func (t *tx) base(id string) (*baseRecord, error) {
	return getJSON[baseRecord](t.b.Bucket(bucketBases), id)
}

func (t *tx) putBase(b *baseRecord) error { return putJSON(t.b.Bucket(bucketBases), b.ID, b) }

func (t *tx) bases() ([]*baseRecord, error) {
	var out []*baseRecord
	err := forEachJSON(t.b.Bucket(bucketBases), func(b *baseRecord) error {
		out = append(out, b)
		return nil
	})
	return out, err
}

func (t *tx) intents() ([]*intent, error) {
	var out []*intent
	err := forEachJSON(t.b.Bucket(bucketJournal), func(in *intent) error {
		out = append(out, in)
		return nil
	})
	return out, err
}

func (t *tx) intent(id string) (*intent, error) {
	return getJSON[intent](t.b.Bucket(bucketJournal), id)
}

func (t *tx) putIntent(in *intent) error { return putJSON(t.b.Bucket(bucketJournal), in.ID, in) }

func (t *tx) deleteIntent(id string) error { return t.b.Bucket(bucketJournal).Delete([]byte(id)) }

// incref adds a reference to base id.
func (t *tx) incref(id string) error {
	if id == "" {
		return nil
	}
	b, err := t.base(id)
	if err != nil {
		return err
	}
	if b == nil {
		return fmt.Errorf("storage metadata: base %s is missing (store damaged)", id)
	}
	b.Refs++
	return t.putBase(b)
}

// decref drops a reference to base id. A frozen base left without
// references is deleted, its file appended to garbage, and its parent
// released in turn.
func (t *tx) decref(id string, garbage *[]string) error {
	for id != "" {
		b, err := t.base(id)
		if err != nil {
			return err
		}
		if b == nil {
			return fmt.Errorf("storage metadata: base %s is missing (store damaged)", id)
		}
		b.Refs--
		if b.Refs < 0 {
			return fmt.Errorf("storage metadata: base %s has a negative reference count (store damaged)", id)
		}
		if b.Refs > 0 || b.Kind == kindBlank {
			return t.putBase(b)
		}
		if err := t.b.Bucket(bucketBases).Delete([]byte(id)); err != nil {
			return err
		}
		*garbage = append(*garbage, baseFile(b))
		id = b.Parent
	}
	return nil
}

// chain lists base id and its ancestors, nearest first.
func (t *tx) chain(id string) ([]string, error) {
	var out []string
	for id != "" {
		if len(out) > 1024 {
			return nil, fmt.Errorf("storage metadata: base chain of %s loops (store damaged)", out[0])
		}
		out = append(out, id)
		b, err := t.base(id)
		if err != nil {
			return nil, err
		}
		if b == nil {
			return nil, fmt.Errorf("storage metadata: base %s is missing (store damaged)", id)
		}
		id = b.Parent
	}
	return out, nil
}

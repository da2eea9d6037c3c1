// Package state is boxctl's persistent state: a bbolt database at
// <home>/state.db holding boxes, the name index, base references,
// snapshots and runtime counters, with a schema version and migrations.
//
// Many boxctl processes share one home. The database is opened only for the
// length of one transaction, under a lock file (<home>/state.lock) taken
// shared for reads and exclusive for writes, so no process holds it across a
// long operation and a reader never waits for bbolt's own lock.
package state

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/internal/txdb"
)

// SchemaVersion is the schema this code reads and writes.
const SchemaVersion = 1

// DefaultTimeout bounds how long a transaction waits for the store lock.
const DefaultTimeout = 30 * time.Second

var (
	bucketMeta      = []byte("meta")
	bucketBoxes     = []byte("boxes")
	bucketNames     = []byte("names")
	bucketAttention = []byte("attention")
	bucketBases     = []byte("bases")
	bucketSnapshots = []byte("snapshots")
	bucketCounters  = []byte("counters")
	// Memory snapshots (memstate.go).
	bucketCheckpoints = []byte("checkpoints")
	bucketTemplates   = []byte("templates")
	bucketVolumes     = []byte("volumes")
	keySchema         = []byte("schema_version")
	keyBoxCount       = []byte("box_count")
)

// ErrSchemaTooNew: the database was written by a newer boxctl.
var ErrSchemaTooNew = errors.New("state database schema is newer than this boxctl")

// migration upgrades a database from version i+1 to i+2 (index i).
type migration func(tx *bolt.Tx) error

// migrations[i] upgrades from version i+1 to i+2. Version 1 is the first
// schema; a future version 2 appends its step here.
var migrations = []migration{}

// Store is the state database of one home directory.
type Store struct {
	db   txdb.DB
	txns atomic.Int64
}

// Option configures Open.
type Option func(*Store)

// WithTimeout sets how long a transaction waits for the store lock.
func WithTimeout(d time.Duration) Option { return func(s *Store) { s.db.Timeout = d } }

// Open prepares the store in dir (creating it), creates missing buckets and
// migrates an older schema. It does not keep the database open.
func Open(ctx context.Context, dir string, opts ...Option) (*Store, error) {
	s := &Store{db: txdb.DB{
		Path:     filepath.Join(dir, "state.db"),
		LockPath: filepath.Join(dir, "state.lock"),
		Timeout:  DefaultTimeout,
		What:     "state store",
	}}
	for _, o := range opts {
		o(s)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open state store %s: %w", s.db.Path, err)
	}
	// Fast path: a current database only needs a read to confirm.
	var version uint64
	err := s.View(ctx, func(tx *Tx) error {
		version = tx.schemaVersion()
		return nil
	})
	if err == nil && version == SchemaVersion {
		return s, nil
	}
	if err != nil && !errors.Is(err, txdb.ErrNoDatabase) {
		return nil, err
	}
	if err := s.db.Update(ctx, s.initSchema); err != nil {
		return nil, err
	}
	return s, nil
}

// Path is the database file.
func (s *Store) Path() string { return s.db.Path }

func (s *Store) initSchema(btx *bolt.Tx) error {
	meta, err := btx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	version := uint64(0)
	if v := meta.Get(keySchema); v != nil {
		version = binary.BigEndian.Uint64(v)
	}
	if version > SchemaVersion {
		return fmt.Errorf("%s has schema version %d, this boxctl understands up to %d: %w; upgrade boxctl", s.db.Path, version, SchemaVersion, ErrSchemaTooNew)
	}
	for _, b := range [][]byte{bucketBoxes, bucketNames, bucketAttention, bucketBases, bucketSnapshots, bucketCounters, bucketCheckpoints, bucketTemplates, bucketVolumes} {
		if _, err := btx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	if version == 0 {
		version = 1 // a fresh database starts at the first schema
	}
	for version < SchemaVersion {
		if err := migrations[version-1](btx); err != nil {
			return fmt.Errorf("migrate %s from schema %d to %d: %w", s.db.Path, version, version+1, err)
		}
		version++
	}
	return meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, version))
}

// Transactions is the number of transactions this Store ran.
func (s *Store) Transactions() int64 { return s.txns.Load() }

// View runs fn in a read-only transaction.
func (s *Store) View(ctx context.Context, fn func(*Tx) error) error {
	s.txns.Add(1)
	return s.db.View(ctx, func(btx *bolt.Tx) error {
		if btx.Bucket(bucketMeta) == nil {
			return txdb.ErrNoDatabase
		}
		tx := &Tx{btx: btx}
		if v := tx.schemaVersion(); v != SchemaVersion {
			return fmt.Errorf("%s has schema version %d, this boxctl understands %d: %w", s.db.Path, v, SchemaVersion, ErrSchemaTooNew)
		}
		return fn(tx)
	})
}

// Update runs fn in a read-write transaction; it commits when fn returns nil.
func (s *Store) Update(ctx context.Context, fn func(*Tx) error) error {
	s.txns.Add(1)
	return s.db.Update(ctx, func(btx *bolt.Tx) error { return fn(&Tx{btx: btx}) })
}

// Tx is one transaction on the store.
type Tx struct {
	btx *bolt.Tx
}

func (tx *Tx) schemaVersion() uint64 {
	meta := tx.btx.Bucket(bucketMeta)
	if meta == nil {
		return 0
	}
	v := meta.Get(keySchema)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// Box returns the box with exactly this ID.
func (tx *Tx) Box(id string) (*model.Box, error) {
	v := tx.btx.Bucket(bucketBoxes).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("box %s: %w", id, model.ErrNotFound)
	}
	return decodeBox(v)
}

// ResolveBox finds a box by exact ID, then name, then unambiguous ID
// prefix.
func (tx *Tx) ResolveBox(ref string) (*model.Box, error) {
	if ref == "" {
		return nil, fmt.Errorf("empty box reference: %w", model.ErrInvalidArgument)
	}
	boxes := tx.btx.Bucket(bucketBoxes)
	if v := boxes.Get([]byte(ref)); v != nil {
		return decodeBox(v)
	}
	if id := tx.btx.Bucket(bucketNames).Get([]byte(ref)); id != nil {
		return tx.Box(string(id))
	}
	var match []byte
	c := boxes.Cursor()
	for k, v := c.Seek([]byte(ref)); k != nil && bytes.HasPrefix(k, []byte(ref)); k, v = c.Next() {
		if match != nil {
			return nil, fmt.Errorf("box %q: the prefix matches several boxes, give more of the ID: %w", ref, model.ErrAmbiguous)
		}
		match = v
	}
	if match == nil {
		return nil, fmt.Errorf("box %q: no box has this name or ID: %w", ref, model.ErrNotFound)
	}
	return decodeBox(match)
}

// NameTaken returns the ID of the box holding name, or "".
func (tx *Tx) NameTaken(name string) string {
	return string(tx.btx.Bucket(bucketNames).Get([]byte(name)))
}

// ShortIDLen is the length of the short IDs `ls` shows.
const ShortIDLen = 12

// NameShadowsID returns the ID of a box that name would take a reference
// away from, or "": one whose full ID is name, or whose ID starts with name
// when name is at least a short ID long. ResolveBox looks names up before
// ID prefixes, so a box named like another's short ID would capture it.
func (tx *Tx) NameShadowsID(name string) string {
	boxes := tx.btx.Bucket(bucketBoxes)
	if boxes.Get([]byte(name)) != nil {
		return name
	}
	if len(name) < ShortIDLen {
		return ""
	}
	if k, _ := boxes.Cursor().Seek([]byte(name)); k != nil && bytes.HasPrefix(k, []byte(name)) {
		return string(k)
	}
	return ""
}

// PutBox writes a box record and keeps the name and attention indexes in
// step. A name held by another box is ErrAlreadyExists.
func (tx *Tx) PutBox(b *model.Box) error {
	if b.ID == "" || b.Name == "" {
		return fmt.Errorf("put box: empty ID or name: %w", model.ErrInvalidArgument)
	}
	names := tx.btx.Bucket(bucketNames)
	if owner := names.Get([]byte(b.Name)); owner != nil && string(owner) != b.ID {
		return fmt.Errorf("the name %q is already in use by box %s: %w", b.Name, short(string(owner)), model.ErrAlreadyExists)
	}
	boxes := tx.btx.Bucket(bucketBoxes)
	if old := boxes.Get([]byte(b.ID)); old != nil {
		prev, err := decodeBox(old)
		if err == nil && prev.Name != b.Name {
			if err := names.Delete([]byte(prev.Name)); err != nil {
				return err
			}
		}
	} else if err := tx.addBoxCount(1); err != nil {
		return err
	}
	v, err := encodeBox(b)
	if err != nil {
		return fmt.Errorf("encode box %s: %w", b.ID, err)
	}
	if err := boxes.Put([]byte(b.ID), v); err != nil {
		return err
	}
	if err := names.Put([]byte(b.Name), []byte(b.ID)); err != nil {
		return err
	}
	att := tx.btx.Bucket(bucketAttention)
	if b.NeedsAttention() {
		return att.Put([]byte(b.ID), nil)
	}
	return att.Delete([]byte(b.ID))
}

// DeleteBox removes a box record, its name, its base references and its
// snapshot records.
func (tx *Tx) DeleteBox(id string) error {
	boxes := tx.btx.Bucket(bucketBoxes)
	old := boxes.Get([]byte(id))
	if old == nil {
		return fmt.Errorf("box %s: %w", id, model.ErrNotFound)
	}
	if prev, err := decodeBox(old); err == nil {
		if owner := tx.NameTaken(prev.Name); owner == id {
			if err := tx.btx.Bucket(bucketNames).Delete([]byte(prev.Name)); err != nil {
				return err
			}
		}
	}
	if err := boxes.Delete([]byte(id)); err != nil {
		return err
	}
	if err := tx.addBoxCount(-1); err != nil {
		return err
	}
	if err := tx.btx.Bucket(bucketAttention).Delete([]byte(id)); err != nil {
		return err
	}
	if _, err := tx.UnrefAll(id); err != nil {
		return err
	}
	if err := tx.deleteCountersWithPrefix(BoxCounterPrefix(id)); err != nil {
		return err
	}
	if err := tx.deleteCheckpointsOf(id); err != nil {
		return err
	}
	return tx.deleteSnapshotsOf(id)
}

// BoxCounterPrefix prefixes the names of counters kept per box; they are
// deleted with the box.
func BoxCounterPrefix(id string) string { return "box/" + id + "/" }

func (tx *Tx) deleteCountersWithPrefix(prefix string) error {
	c := tx.btx.Bucket(bucketCounters).Cursor()
	var keys [][]byte
	for k, _ := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := tx.btx.Bucket(bucketCounters).Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Boxes returns every box, newest first (ties broken by ID).
func (tx *Tx) Boxes() ([]*model.Box, error) {
	bk := tx.btx.Bucket(bucketBoxes)
	out := make([]*model.Box, 0, bk.Stats().KeyN)
	err := bk.ForEach(func(_, v []byte) error {
		b, err := decodeBox(v)
		if err != nil {
			return err
		}
		out = append(out, b)
		return nil
	})
	SortNewestFirst(out)
	return out, err
}

// SortNewestFirst orders boxes by creation time, newest first (ties by ID).
func SortNewestFirst(boxes []*model.Box) {
	sort.Slice(boxes, func(i, j int) bool {
		if !boxes[i].CreatedAt.Equal(boxes[j].CreatedAt) {
			return boxes[i].CreatedAt.After(boxes[j].CreatedAt)
		}
		return boxes[i].ID < boxes[j].ID
	})
}

// BoxCount returns the number of boxes without reading them.
func (tx *Tx) BoxCount() int {
	v := tx.btx.Bucket(bucketMeta).Get(keyBoxCount)
	if len(v) != 8 {
		return len(tx.BoxIDs())
	}
	return int(binary.BigEndian.Uint64(v))
}

func (tx *Tx) addBoxCount(delta int) error {
	n := tx.BoxCount() + delta
	if n < 0 {
		n = 0
	}
	return tx.btx.Bucket(bucketMeta).Put(keyBoxCount, binary.BigEndian.AppendUint64(nil, uint64(n)))
}

// BoxIDs returns every box ID without decoding the records.
func (tx *Tx) BoxIDs() map[string]bool {
	ids := map[string]bool{}
	_ = tx.btx.Bucket(bucketBoxes).ForEach(func(k, _ []byte) error {
		ids[string(k)] = true
		return nil
	})
	return ids
}

// AttentionBoxes returns the boxes recovery must look at (see
// model.Box.NeedsAttention) without reading the others.
func (tx *Tx) AttentionBoxes() ([]*model.Box, error) {
	var out []*model.Box
	err := tx.btx.Bucket(bucketAttention).ForEach(func(k, _ []byte) error {
		b, err := tx.Box(string(k))
		if errors.Is(err, model.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		out = append(out, b)
		return nil
	})
	return out, err
}

// Counter returns a runtime counter's value.
func (tx *Tx) Counter(name string) uint64 {
	v := tx.btx.Bucket(bucketCounters).Get([]byte(name))
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// AddCounter adds delta to a runtime counter.
func (tx *Tx) AddCounter(name string, delta uint64) error {
	return tx.btx.Bucket(bucketCounters).Put([]byte(name), binary.BigEndian.AppendUint64(nil, tx.Counter(name)+delta))
}

// Counters returns every runtime counter.
func (tx *Tx) Counters() map[string]uint64 {
	out := map[string]uint64{}
	_ = tx.btx.Bucket(bucketCounters).ForEach(func(k, v []byte) error {
		if len(v) == 8 {
			out[string(k)] = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return out
}

func short(id string) string {
	if len(id) > ShortIDLen {
		return id[:ShortIDLen]
	}
	return id
}

// baseRefSep separates a base key from a box ID in the bases bucket.
const baseRefSep = "\x00"

// Ref records that box references base (an image root disk, a shared disk
// base). Idempotent.
func (tx *Tx) Ref(base, boxID string) error {
	return tx.btx.Bucket(bucketBases).Put([]byte(base+baseRefSep+boxID), nil)
}

// Unref drops box's reference to base and returns how many references the
// base has left.
func (tx *Tx) Unref(base, boxID string) (int, error) {
	if err := tx.btx.Bucket(bucketBases).Delete([]byte(base + baseRefSep + boxID)); err != nil {
		return 0, err
	}
	return len(tx.Refs(base)), nil
}

// UnrefAll drops every reference box holds and returns the bases that now
// have none.
func (tx *Tx) UnrefAll(boxID string) ([]string, error) {
	bk := tx.btx.Bucket(bucketBases)
	var mine []string
	_ = bk.ForEach(func(k, _ []byte) error {
		base, id, ok := strings.Cut(string(k), baseRefSep)
		if ok && id == boxID {
			mine = append(mine, base)
		}
		return nil
	})
	var orphaned []string
	for _, base := range mine {
		n, err := tx.Unref(base, boxID)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			orphaned = append(orphaned, base)
		}
	}
	return orphaned, nil
}

// Refs returns the IDs of the boxes referencing base.
func (tx *Tx) Refs(base string) []string {
	var ids []string
	prefix := []byte(base + baseRefSep)
	c := tx.btx.Bucket(bucketBases).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		ids = append(ids, string(k[len(prefix):]))
	}
	return ids
}

// Snapshot is the core's record of a box snapshot (the storage plugin holds
// the data).
type Snapshot struct {
	BoxID     string    `json:"box_id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	SizeBytes uint64    `json:"size_bytes"`
}

func snapshotKey(boxID, name string) []byte { return []byte(boxID + baseRefSep + name) }

// PutSnapshot records a snapshot.
func (tx *Tx) PutSnapshot(s Snapshot) error {
	v, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return tx.btx.Bucket(bucketSnapshots).Put(snapshotKey(s.BoxID, s.Name), v)
}

// DeleteSnapshot removes a snapshot record.
func (tx *Tx) DeleteSnapshot(boxID, name string) error {
	return tx.btx.Bucket(bucketSnapshots).Delete(snapshotKey(boxID, name))
}

// Snapshots lists a box's snapshot records, oldest first.
func (tx *Tx) Snapshots(boxID string) ([]Snapshot, error) {
	var out []Snapshot
	prefix := []byte(boxID + baseRefSep)
	c := tx.btx.Bucket(bucketSnapshots).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var s Snapshot
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, fmt.Errorf("decode snapshot %q: %w", k, err)
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

func (tx *Tx) deleteSnapshotsOf(boxID string) error {
	snaps, err := tx.Snapshots(boxID)
	if err != nil {
		return err
	}
	for _, s := range snaps {
		if err := tx.DeleteSnapshot(boxID, s.Name); err != nil {
			return err
		}
	}
	return nil
}

// Check verifies the store's indexes against its records and returns every
// inconsistency found (empty when consistent): names that point at missing
// or differently named boxes, boxes missing from the name index, attention
// entries that are missing or stale.
func (tx *Tx) Check() []string {
	var problems []string
	boxes := tx.btx.Bucket(bucketBoxes)
	names := tx.btx.Bucket(bucketNames)
	att := tx.btx.Bucket(bucketAttention)
	_ = names.ForEach(func(k, v []byte) error {
		raw := boxes.Get(v)
		if raw == nil {
			problems = append(problems, fmt.Sprintf("name %q points at missing box %s", k, v))
			return nil
		}
		b, err := decodeBox(raw)
		if err != nil {
			problems = append(problems, fmt.Sprintf("box %s: %v", v, err))
		} else if b.Name != string(k) {
			problems = append(problems, fmt.Sprintf("name %q points at box %s, which is named %q", k, v, b.Name))
		}
		return nil
	})
	_ = boxes.ForEach(func(k, v []byte) error {
		b, err := decodeBox(v)
		if err != nil {
			problems = append(problems, fmt.Sprintf("box %s: %v", k, err))
			return nil
		}
		if string(names.Get([]byte(b.Name))) != b.ID {
			problems = append(problems, fmt.Sprintf("box %s (%s) is missing from the name index", b.ID, b.Name))
		}
		if (att.Get(k) != nil) != b.NeedsAttention() {
			problems = append(problems, fmt.Sprintf("box %s: attention index disagrees with its status %s", b.ID, b.Status))
		}
		return nil
	})
	if n, actual := tx.BoxCount(), len(tx.BoxIDs()); n != actual {
		problems = append(problems, fmt.Sprintf("box count says %d, the store holds %d", n, actual))
	}
	_ = att.ForEach(func(k, _ []byte) error {
		if boxes.Get(k) == nil {
			problems = append(problems, fmt.Sprintf("attention index holds missing box %s", k))
		}
		return nil
	})
	return problems
}

package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/boxctl/boxctl/internal/lockfile"
)

// Operations recorded in the journal.
const (
	opCreate         = "create"
	opSnapshot       = "snapshot"
	opRestore        = "restore"
	opClone          = "clone"
	opCloneShared    = "clone-shared"
	opRemove         = "remove"
	opRemoveSnapshot = "remove-snapshot"
	opImport         = "import"
	opImportSnapshot = "import-snapshot"
)

// intent is a journal record: an operation in progress, written before it
// touches any file, in the transaction that checked its preconditions. It
// names everything recovery needs to roll the operation back (or, for a
// restore that replaced the overlay, forward).
type intent struct {
	ID string `json:"id"`
	Op string `json:"op"`
	// Disks are the disks whose locks the operation holds.
	Disks []string `json:"disks"`
	// Disk is the disk operated on; NewDisk the disk a clone creates.
	Disk    string `json:"disk,omitempty"`
	NewDisk string `json:"new_disk,omitempty"`
	// Base is the frozen base a snapshot or clone creates, or the base a
	// restore or shared clone overlays.
	Base string `json:"base,omitempty"`
	// Name is the snapshot name.
	Name string `json:"name,omitempty"`
	// Temps are temporary files the operation may create.
	Temps []string `json:"temps,omitempty"`
	// OldInode is the inode of the overlay a restore replaces.
	OldInode uint64 `json:"old_inode,omitempty"`
	// Committed marks a cleanup record: the operation's metadata change
	// is done and Garbage (files nothing references any more) remains to
	// be deleted.
	Committed bool     `json:"committed,omitempty"`
	Garbage   []string `json:"garbage,omitempty"`
}

func (in *intent) touches(disks map[string]bool) bool {
	for _, d := range in.Disks {
		if disks[d] {
			return true
		}
	}
	return false
}

// files lists every file (relative to the state dir) the operation may
// create, move or delete, so the orphan sweep leaves them alone.
func (in *intent) files() []string {
	out := append([]string(nil), in.Temps...)
	out = append(out, in.Garbage...)
	if in.Disk != "" {
		out = append(out, diskFile(in.Disk))
	}
	if in.NewDisk != "" {
		out = append(out, diskFile(in.NewDisk))
	}
	if in.Base != "" {
		out = append(out, baseFileByID(in.Base))
	}
	return out
}

// recoverAll recovers every intent whose disks can all be locked now, that
// is every intent of a process that is gone. Intents of live operations are
// left alone.
func (s *Store) recoverAll(ctx context.Context, cfg *settings) error {
	var all []*intent
	if err := cfg.db.view(ctx, func(t *tx) error {
		var err error
		all, err = t.intents()
		return err
	}); err != nil {
		return err
	}
	for _, in := range all {
		h, ok, err := s.tryLock(cfg, in.Disks)
		if err != nil {
			return err
		}
		if !ok {
			s.log.Debug("operation in progress elsewhere, not recovering it", "op", in.Op, "id", in.ID, "disks", in.Disks)
			continue
		}
		err = s.recoverIntent(ctx, cfg, in.ID)
		h.release()
		if err != nil {
			return err
		}
	}
	return nil
}

// tryLock takes the locks of ids without waiting; ok is false if any is
// held elsewhere.
func (s *Store) tryLock(cfg *settings, ids []string) (*heldLocks, bool, error) {
	h := &heldLocks{cfg: cfg, locks: map[string]*lockfile.Lock{}}
	for _, id := range keys(setOf(ids)) {
		l, ok, err := lockfile.TryAcquire(diskLockPath(cfg, id), false)
		if err != nil || !ok {
			h.release()
			return nil, false, err
		}
		h.locks[id] = l
	}
	return h, true, nil
}

func setOf(ids []string) map[string]bool {
	m := map[string]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}

func (s *Store) recoverIntents(ctx context.Context, cfg *settings, ins []*intent) error {
	for _, in := range ins {
		if err := s.recoverIntent(ctx, cfg, in.ID); err != nil {
			return err
		}
	}
	return nil
}

// recoverIntent finishes or rolls back the operation journaled as id. The
// caller holds the locks of all its disks. Every step is idempotent, so a
// crash during recovery is recovered by the next one.
func (s *Store) recoverIntent(ctx context.Context, cfg *settings, id string) error {
	var in *intent
	if err := cfg.db.view(ctx, func(t *tx) error {
		var err error
		in, err = t.intent(id)
		return err
	}); err != nil || in == nil {
		return err
	}
	s.log.Info("recovering unfinished operation", "op", in.Op, "id", in.ID, "disks", in.Disks, "committed", in.Committed)
	if in.Committed {
		return s.finishCleanup(ctx, cfg, in, "")
	}
	switch in.Op {
	case opRestore:
		// Once the new overlay replaced the old one, the old state is
		// gone: roll forward.
		ino, err := inode(cfg.path(diskFile(in.Disk)))
		if err != nil {
			return err
		}
		if ino != 0 && ino != in.OldInode {
			cleanup, err := s.commitRestore(ctx, cfg, in)
			if err != nil {
				return err
			}
			return s.finishCleanup(ctx, cfg, cleanup, "")
		}
	case opImportSnapshot:
		// The commit records the base and deletes the intent at once: an
		// intent means the base file, if any, is unrecorded.
		if err := s.removeUnrecordedBase(ctx, cfg, in.Base); err != nil {
			return err
		}
	case opSnapshot, opClone:
		// The overlay was frozen into the new base: put it back.
		frozen := cfg.path(baseFileByID(in.Base))
		ok, err := exists(frozen)
		if err != nil {
			return err
		}
		if ok {
			overlay := cfg.path(diskFile(in.Disk))
			if err := removeIfExists(overlay); err != nil {
				return err
			}
			if err := renameDurable(frozen, overlay); err != nil {
				return err
			}
			if err := chmodDurable(overlay, 0o644); err != nil {
				return err
			}
		}
	}
	// Disks the operation was creating have no record yet: their
	// overlay files are the operation's own.
	for _, d := range []string{newDiskOf(in)} {
		if d == "" {
			continue
		}
		if err := s.removeUnrecordedDisk(ctx, cfg, d); err != nil {
			return err
		}
	}
	if err := removeFiles(cfg, in.Temps); err != nil {
		return err
	}
	return cfg.db.update(ctx, func(t *tx) error { return t.deleteIntent(in.ID) })
}

// newDiskOf is the disk an operation creates, if any.
func newDiskOf(in *intent) string {
	switch in.Op {
	case opCreate, opImport:
		return in.Disk
	case opClone, opCloneShared:
		return in.NewDisk
	}
	return ""
}

// removeUnrecordedDisk deletes the overlay of disk id if no record claims
// it. The caller holds id's lock.
func (s *Store) removeUnrecordedDisk(ctx context.Context, cfg *settings, id string) error {
	var rec *diskRecord
	if err := cfg.db.view(ctx, func(t *tx) error {
		var err error
		rec, err = t.disk(id)
		return err
	}); err != nil {
		return err
	}
	if rec != nil {
		return nil
	}
	return removeFiles(cfg, []string{diskFile(id)})
}

// removeUnrecordedBase deletes the file of base id if no record claims it.
func (s *Store) removeUnrecordedBase(ctx context.Context, cfg *settings, id string) error {
	var rec *baseRecord
	if err := cfg.db.view(ctx, func(t *tx) error {
		var err error
		rec, err = t.base(id)
		return err
	}); err != nil || rec != nil {
		return err
	}
	return removeFiles(cfg, []string{baseFileByID(id)})
}

func removeFiles(cfg *settings, files []string) error {
	dirs := map[string]bool{}
	for _, f := range files {
		p := cfg.path(f)
		ok, err := exists(p)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		dirs[filepath.Dir(p)] = true
	}
	for d := range dirs {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// finishCleanup deletes the garbage of a committed operation, then its
// cleanup record. Files something references again are kept (a disk ID can
// be reused once its removal committed).
func (s *Store) finishCleanup(ctx context.Context, cfg *settings, in *intent, crashOp string) error {
	if in == nil {
		return nil
	}
	var files []string
	if err := cfg.db.view(ctx, func(t *tx) error {
		for _, f := range in.Garbage {
			used, err := referenced(t, f)
			if err != nil {
				return err
			}
			if !used {
				files = append(files, f)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := removeFiles(cfg, files); err != nil {
		return err
	}
	s.crashPoint(crashOp, "garbage-deleted")
	return cfg.db.update(ctx, func(t *tx) error { return t.deleteIntent(in.ID) })
}

// referenced reports whether a metadata record claims file f.
func referenced(t *tx, f string) (bool, error) {
	dir, name := filepath.Split(f)
	switch filepath.Clean(dir) {
	case dirDisks:
		d, err := t.disk(strings.TrimSuffix(name, ".qcow2"))
		return d != nil, err
	case dirBases:
		b, err := t.base(strings.TrimSuffix(name, ".qcow2"))
		return b != nil, err
	case dirBlank:
		b, err := t.base(strings.TrimSuffix(name, ".raw"))
		return b != nil, err
	}
	return false, fmt.Errorf("unexpected garbage file %s", f)
}

// sweep deletes files nothing references and no operation in progress
// names: leftovers of crashes outside any journaled step. It lists the
// directories before reading the metadata, so a file an operation journals
// and creates meanwhile is never in the listing it judges.
func (s *Store) sweep(ctx context.Context, cfg *settings) error {
	var listed []string
	for _, dir := range []string{dirDisks, dirBases, dirBlank} {
		ents, err := os.ReadDir(cfg.path(dir))
		if err != nil {
			return err
		}
		for _, e := range ents {
			listed = append(listed, filepath.Join(dir, e.Name()))
		}
	}
	if len(listed) == 0 {
		return nil
	}
	inUse := map[string]bool{}
	liveOps := map[string]bool{}
	var orphans []string
	err := cfg.db.view(ctx, func(t *tx) error {
		ins, err := t.intents()
		if err != nil {
			return err
		}
		for _, in := range ins {
			liveOps[in.ID] = true
			for _, f := range in.files() {
				inUse[f] = true
			}
		}
		for _, f := range listed {
			if inUse[f] {
				continue
			}
			if op, ok := tempOp(f); ok {
				if !liveOps[op] {
					orphans = append(orphans, f)
				}
				continue
			}
			used, err := referenced(t, f)
			if err != nil {
				return err
			}
			if !used {
				orphans = append(orphans, f)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, f := range orphans {
		if err := s.removeOrphan(ctx, cfg, f); err != nil {
			return err
		}
	}
	return nil
}

// tempOp returns the operation ID in a temporary file's name
// (.<id>.<op>.tmp).
func tempOp(f string) (string, bool) {
	name := filepath.Base(f)
	if !strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".tmp") {
		return "", false
	}
	name = strings.TrimSuffix(name, ".tmp")
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return "", false
	}
	return name[i+1:], true
}

// removeOrphan deletes one unreferenced file under the lock that guards
// its name, re-checking under that lock; files it cannot lock, or does not
// recognise, are left for a later sweep (Check reports them).
func (s *Store) removeOrphan(ctx context.Context, cfg *settings, f string) error {
	dir, name := filepath.Split(f)
	dir = filepath.Clean(dir)
	var lockPath string
	switch {
	case dir == dirDisks && strings.HasSuffix(name, ".qcow2") && diskIDPattern.MatchString(strings.TrimSuffix(name, ".qcow2")):
		lockPath = diskLockPath(cfg, strings.TrimSuffix(name, ".qcow2"))
	case dir == dirDisks && strings.HasPrefix(name, "."):
		// A dead operation's temporary overlay; its name is unique.
	case dir == dirBases && baseIDPattern.MatchString(strings.TrimSuffix(name, ".qcow2")):
		// Base names are never reused.
	case dir == dirBlank:
		size, ok := blankSizeOf(name)
		_, isTemp := tempOp(f)
		if !ok || (!isTemp && name != blankID(size)+".raw") {
			return nil
		}
		lockPath = blankLockPath(cfg, size)
	default:
		return nil
	}
	if lockPath != "" {
		l, ok, err := lockfile.TryAcquire(lockPath, false)
		if err != nil || !ok {
			return err
		}
		defer l.Release()
	}
	var keep, adopt bool
	if err := cfg.db.update(ctx, func(t *tx) error {
		ins, err := t.intents()
		if err != nil {
			return err
		}
		for _, in := range ins {
			for _, g := range in.files() {
				if g == f {
					keep = true
					return nil
				}
			}
		}
		if _, isTemp := tempOp(f); isTemp {
			return nil
		}
		if keep, err = referenced(t, f); err != nil || keep {
			return err
		}
		if dir == dirBlank {
			// A complete blank base (only complete ones get their final
			// name) whose record was not written yet: adopt it.
			adopt = true
			return t.putBase(&baseRecord{ID: strings.TrimSuffix(name, ".raw"), Kind: kindBlank})
		}
		return nil
	}); err != nil {
		return err
	}
	if keep || adopt {
		return nil
	}
	s.log.Warn("removing unreferenced file", "path", cfg.path(f))
	return removeFiles(cfg, []string{f})
}

// blankSizeOf parses a blank base's file name (ext4-<n>.raw or a
// temporary .ext4-<n>.<op>.tmp) into its size.
func blankSizeOf(name string) (uint64, bool) {
	name = strings.TrimPrefix(name, ".")
	if !strings.HasPrefix(name, blankPrefix) {
		return 0, false
	}
	rest := strings.TrimPrefix(name, blankPrefix)
	if i := strings.IndexByte(rest, '.'); i >= 0 {
		rest = rest[:i]
	}
	n, err := parseSize(rest)
	if err != nil || blankID(n) != blankPrefix+rest {
		return 0, false
	}
	return n, true
}

package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/plugins/storage-qcow2/internal/filecopy"
	"github.com/boxctl/boxctl/plugins/storage-qcow2/qcow2"
	"github.com/boxctl/boxctl/sdk"
)

// CreateDisk implements sdk.DiskBackend: a qcow2 overlay of the requested
// size over the cached blank ext4 base of that size.
func (s *Store) CreateDisk(ctx context.Context, req sdk.CreateDiskRequest) (sdk.Disk, error) {
	cfg, err := s.settings()
	if err != nil {
		return sdk.Disk{}, err
	}
	id := req.ID
	if err := checkDiskID("disk ID", id); err != nil {
		return sdk.Disk{}, err
	}
	if fs := req.Filesystem; fs != "" && fs != "ext4" {
		return sdk.Disk{}, fmt.Errorf("create disk %s: filesystem %q is not supported (only ext4): %w", id, fs, sdk.ErrInvalidArgument)
	}
	size := (min(req.Size, 1<<62) + 511) &^ 511
	if size < minDiskSize || size > cfg.maxVirtualSize {
		return sdk.Disk{}, fmt.Errorf("create disk %s: size %d bytes is outside 1MiB..%d bytes (max_virtual_size): %w", id, req.Size, cfg.maxVirtualSize, sdk.ErrInvalidArgument)
	}
	if cfg.mkfs == "" {
		return sdk.Disk{}, fmt.Errorf("create disk %s: mkfs.ext4 not found: install e2fsprogs, or set mkfs = \"/path/to/mkfs.ext4\" in the qcow2 plugin's config block: %w", id, sdk.ErrInvalidState)
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, false)
	if err != nil {
		return sdk.Disk{}, err
	}
	defer locks.release()

	op, bid := newID(), blankID(size)
	tmp := tempDiskFile(id, op)
	in := &intent{ID: op, Op: opCreate, Disks: []string{id}, Disk: id, Base: bid, Temps: []string{tmp, tempBlankFile(bid, op)}}
	if err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(id)
		if err != nil {
			return err
		}
		if d != nil {
			return fmt.Errorf("create disk %s: %w", id, sdk.ErrAlreadyExists)
		}
		return t.putIntent(in)
	}); err != nil {
		return sdk.Disk{}, err
	}
	s.crashPoint(opCreate, "journaled")
	done := false
	defer s.rollbackUnless(ctx, cfg, in, &done)

	if err := s.ensureBlank(ctx, cfg, size, op); err != nil {
		return sdk.Disk{}, fmt.Errorf("create disk %s: %w", id, err)
	}
	if err := createOverlay(cfg, tmp, bid, int64(size)); err != nil {
		return sdk.Disk{}, fmt.Errorf("create disk %s: %w", id, err)
	}
	s.crashPoint(opCreate, "overlay-created")
	if err := renameDurable(cfg.path(tmp), cfg.path(diskFile(id))); err != nil {
		return sdk.Disk{}, fmt.Errorf("create disk %s: %w", id, err)
	}
	s.crashPoint(opCreate, "renamed")
	if err := cfg.db.update(ctx, func(t *tx) error {
		if err := t.incref(bid); err != nil {
			return err
		}
		if err := t.putDisk(&diskRecord{ID: id, Base: bid, CreatedAt: time.Now().UnixNano()}); err != nil {
			return err
		}
		return t.deleteIntent(op)
	}); err != nil {
		return sdk.Disk{}, fmt.Errorf("create disk %s: %w", id, err)
	}
	done = true
	s.crashPoint(opCreate, "committed")
	return diskInfo(cfg, id)
}

// rollbackUnless rolls back an operation that failed before its commit,
// with the locks still held. If that fails too, the intent stays for the
// next recovery.
func (s *Store) rollbackUnless(ctx context.Context, cfg *settings, in *intent, done *bool) {
	if *done {
		return
	}
	if err := s.recoverIntent(context.WithoutCancel(ctx), cfg, in.ID); err != nil {
		s.log.Error("rolling back a failed operation failed; the next start will retry", "op", in.Op, "id", in.ID, "error", err)
	}
}

// createOverlay creates the qcow2 file rel (relative to the state dir)
// backed by base, durably.
func createOverlay(cfg *settings, rel, base string, size int64) error {
	img, err := qcow2.Create(cfg.path(rel), qcow2.CreateOptions{
		Size:          size,
		ClusterSize:   cfg.clusterSize,
		BackingFile:   backingName(base),
		BackingFormat: backingFormat(base),
	})
	if err != nil {
		return err
	}
	if err := img.Close(); err != nil {
		os.Remove(cfg.path(rel))
		return err
	}
	return nil
}

// ensureBlank makes sure the blank ext4 base of size bytes exists and is
// recorded. It is built at most once, under a lock every process shares.
func (s *Store) ensureBlank(ctx context.Context, cfg *settings, size uint64, op string) error {
	bid := blankID(size)
	lctx, cancel := context.WithTimeout(ctx, s.lockTimeout)
	defer cancel()
	lock, err := lockfile.Acquire(lctx, blankLockPath(cfg, size), false)
	if err != nil {
		return fmt.Errorf("blank base of %d bytes is busy: %w", size, err)
	}
	defer lock.Release()

	var rec *baseRecord
	if err := cfg.db.view(ctx, func(t *tx) error {
		rec, err = t.base(bid)
		return err
	}); err != nil {
		return err
	}
	final := cfg.path(baseFileByID(bid))
	ok, err := exists(final)
	if err != nil {
		return err
	}
	if !ok {
		if err := s.buildBlank(ctx, cfg, size, cfg.path(tempBlankFile(bid, op)), final); err != nil {
			return err
		}
	}
	if rec != nil {
		return nil
	}
	return cfg.db.update(ctx, func(t *tx) error {
		if b, err := t.base(bid); err != nil || b != nil {
			return err
		}
		return t.putBase(&baseRecord{ID: bid, Kind: kindBlank})
	})
}

// buildBlank formats a sparse raw file of size bytes with mkfs.ext4 (lazy
// inode table and journal init keep it sparse and fast) and moves it to
// final, read-only.
func (s *Store) buildBlank(ctx context.Context, cfg *settings, size uint64, tmp, final string) error {
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	f.Close()
	cmd := exec.CommandContext(ctx, cfg.mkfs, "-F", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", tmp)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	started := time.Now()
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("make blank ext4 base: %s failed: %v: %s", cfg.mkfs, err, strings.TrimSpace(out.String()))
	}
	if err := chmodDurable(tmp, 0o444); err != nil {
		os.Remove(tmp)
		return err
	}
	s.crashPoint(opCreate, "blank-built")
	if err := renameDurable(tmp, final); err != nil {
		os.Remove(tmp)
		return err
	}
	s.crashPoint(opCreate, "blank-renamed")
	s.log.Debug("built blank ext4 base", "size", size, "took", time.Since(started))
	return nil
}

// GetDisk implements sdk.DiskBackend.
func (s *Store) GetDisk(ctx context.Context, id string) (sdk.Disk, error) {
	cfg, err := s.settings()
	if err != nil {
		return sdk.Disk{}, err
	}
	if err := checkDiskID("disk ID", id); err != nil {
		return sdk.Disk{}, err
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, true)
	if err != nil {
		return sdk.Disk{}, err
	}
	defer locks.release()
	if _, err := getDisk(ctx, cfg, id); err != nil {
		return sdk.Disk{}, err
	}
	return diskInfo(cfg, id)
}

// getDisk reads disk id's record; NOT_FOUND if there is none.
func getDisk(ctx context.Context, cfg *settings, id string) (*diskRecord, error) {
	var d *diskRecord
	err := cfg.db.view(ctx, func(t *tx) error {
		var err error
		d, err = t.disk(id)
		return err
	})
	if err != nil {
		return nil, err
	}
	if d == nil {
		return nil, fmt.Errorf("disk %s: %w", id, sdk.ErrNotFound)
	}
	return d, nil
}

// diskInfo describes disk id's overlay and its backing chain as
// `qemu-img info --backing-chain` does.
func diskInfo(cfg *settings, id string) (sdk.Disk, error) {
	info, err := qcow2.Info(cfg.path(diskFile(id)))
	if err != nil {
		return sdk.Disk{}, fmt.Errorf("disk %s: %w", id, err)
	}
	out := sdk.Disk{
		ID:            id,
		Path:          info.Path,
		Format:        info.Format,
		VirtualSize:   uint64(info.VirtualSize),
		AllocatedSize: uint64(info.ActualSize),
	}
	for _, l := range info.BackingChain {
		out.BackingChain = append(out.BackingChain, sdk.BackingFile{Path: l.Path, Format: l.Format, VirtualSize: uint64(l.VirtualSize)})
	}
	return out, nil
}

// ListDisks implements sdk.DiskBackend.
func (s *Store) ListDisks(ctx context.Context) ([]sdk.Disk, error) {
	cfg, err := s.settings()
	if err != nil {
		return nil, err
	}
	var ids []string
	if err := cfg.db.view(ctx, func(t *tx) error {
		ds, err := t.disks()
		for _, d := range ds {
			ids = append(ids, d.ID)
		}
		return err
	}); err != nil {
		return nil, err
	}
	out := make([]sdk.Disk, 0, len(ids))
	for _, id := range ids {
		info, err := s.GetDisk(ctx, id)
		if errors.Is(err, sdk.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// FileInfo implements sdk.DiskInspector. The file is not trusted: its
// backing file reference is reported as recorded, never opened.
func (s *Store) FileInfo(ctx context.Context, path string) (sdk.Disk, error) {
	return fileInfo(path)
}

func fileInfo(path string) (sdk.Disk, error) {
	if !filepath.IsAbs(path) {
		return sdk.Disk{}, fmt.Errorf("file info: %q is not an absolute path: %w", path, sdk.ErrInvalidArgument)
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return sdk.Disk{}, fmt.Errorf("file info %s: %w", path, sdk.ErrNotFound)
	}
	if err != nil {
		return sdk.Disk{}, fmt.Errorf("file info %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return sdk.Disk{}, fmt.Errorf("file info %s: not a regular file: %w", path, sdk.ErrInvalidArgument)
	}
	out := sdk.Disk{Path: path, Format: qcow2.FormatRaw, VirtualSize: uint64(fi.Size()), AllocatedSize: allocated(fi)}
	img, err := qcow2.Open(path, qcow2.OpenOptions{NoBacking: true, L2CacheBytes: 1 << 20})
	if errors.Is(err, qcow2.ErrNotQcow2) {
		return out, nil
	}
	if err != nil {
		return sdk.Disk{}, fmt.Errorf("file info: %w: %w", err, sdk.ErrInvalidArgument)
	}
	defer img.Close()
	out.Format = qcow2.FormatQcow2
	out.VirtualSize = uint64(img.Size())
	if name, format := img.Backing(); name != "" {
		out.BackingChain = []sdk.BackingFile{{Path: qcow2.ResolveBacking(path, name), Format: format}}
	}
	return out, nil
}

func allocated(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*unix.Stat_t); ok {
		return uint64(st.Blocks) * 512
	}
	return 0
}

// Resize implements sdk.Resizer: it grows the overlay's virtual size.
func (s *Store) Resize(ctx context.Context, id string, size uint64) (sdk.Disk, error) {
	cfg, err := s.settings()
	if err != nil {
		return sdk.Disk{}, err
	}
	if err := checkDiskID("disk ID", id); err != nil {
		return sdk.Disk{}, err
	}
	if size > cfg.maxVirtualSize {
		return sdk.Disk{}, fmt.Errorf("resize disk %s to %d bytes: above max_virtual_size (%d bytes): %w", id, size, cfg.maxVirtualSize, sdk.ErrInvalidArgument)
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, false)
	if err != nil {
		return sdk.Disk{}, err
	}
	defer locks.release()
	if _, err := getDisk(ctx, cfg, id); err != nil {
		return sdk.Disk{}, err
	}
	img, err := qcow2.Open(cfg.path(diskFile(id)), qcow2.OpenOptions{Writable: true})
	if err != nil {
		return sdk.Disk{}, fmt.Errorf("resize disk %s: %w", id, err)
	}
	if cur := uint64(img.Size()); size < cur {
		img.Close()
		return sdk.Disk{}, fmt.Errorf("resize disk %s from %d to %d bytes: shrinking is not supported: %w", id, cur, size, sdk.ErrInvalidArgument)
	}
	err = img.Resize(int64(size))
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return sdk.Disk{}, fmt.Errorf("resize disk %s: %w", id, err)
	}
	return diskInfo(cfg, id)
}

// Export implements sdk.Exporter: it flattens the disk's chain (or its
// snapshot req.Snapshot's) into a standalone sparse file at dest, durably,
// without ever replacing a file.
func (s *Store) Export(ctx context.Context, req sdk.ExportRequest) (sdk.Disk, error) {
	cfg, err := s.settings()
	if err != nil {
		return sdk.Disk{}, err
	}
	id, dest := req.ID, req.Dest
	if err := checkDiskID("disk ID", id); err != nil {
		return sdk.Disk{}, err
	}
	format := req.Format
	if format == "" {
		format = qcow2.FormatQcow2
	}
	if format != qcow2.FormatQcow2 && format != qcow2.FormatRaw {
		return sdk.Disk{}, fmt.Errorf("export disk %s: format %q (want qcow2 or raw): %w", id, format, sdk.ErrInvalidArgument)
	}
	if !filepath.IsAbs(dest) {
		return sdk.Disk{}, fmt.Errorf("export disk %s: destination %q is not an absolute path: %w", id, dest, sdk.ErrInvalidArgument)
	}
	if fi, err := os.Stat(filepath.Dir(dest)); err != nil || !fi.IsDir() {
		return sdk.Disk{}, fmt.Errorf("export disk %s: the directory of %s does not exist: %w", id, dest, sdk.ErrInvalidArgument)
	}
	if ok, err := exists(dest); err != nil || ok {
		if err == nil {
			err = fmt.Errorf("export disk %s: %s: %w", id, dest, sdk.ErrAlreadyExists)
		}
		return sdk.Disk{}, err
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, true)
	if err != nil {
		return sdk.Disk{}, err
	}
	defer locks.release()
	d, err := getDisk(ctx, cfg, id)
	if err != nil {
		return sdk.Disk{}, err
	}
	src := cfg.path(diskFile(id))
	if req.Snapshot != "" {
		// Bases are immutable and the disk's lock keeps the snapshot from
		// being removed meanwhile.
		_, sn := d.snapshot(req.Snapshot)
		if sn == nil {
			return sdk.Disk{}, fmt.Errorf("export snapshot %q of disk %s: %w", req.Snapshot, id, sdk.ErrNotFound)
		}
		src = cfg.path(baseFileByID(sn.Base))
	}
	tmp := filepath.Join(filepath.Dir(dest), "."+filepath.Base(dest)+"."+newID()[:12]+".tmp")
	if err := qcow2.Convert(ctx, src, tmp, qcow2.ConvertOptions{Format: format, ClusterSize: cfg.clusterSize, SourceFormat: qcow2.FormatQcow2}); err != nil {
		return sdk.Disk{}, fmt.Errorf("export disk %s: %w", id, err)
	}
	if err := renameNoReplace(tmp, dest); err != nil {
		os.Remove(tmp)
		if errors.Is(err, os.ErrExist) {
			return sdk.Disk{}, fmt.Errorf("export disk %s: %s: %w", id, dest, sdk.ErrAlreadyExists)
		}
		return sdk.Disk{}, fmt.Errorf("export disk %s: %w", id, err)
	}
	if err := syncDir(filepath.Dir(dest)); err != nil {
		return sdk.Disk{}, fmt.Errorf("export disk %s: %w", id, err)
	}
	return fileInfo(dest)
}

// renameNoReplace renames from to to, failing with an os.ErrExist error if
// to exists.
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%s: %w", to, os.ErrExist)
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	// The filesystem has no RENAME_NOREPLACE: a hard link does not
	// replace either.
	if err := os.Link(from, to); err != nil {
		return err
	}
	return os.Remove(from)
}

// maxSize is the virtual size cap for a request: the request's own, capped
// by the configured one.
func (cfg *settings) maxSize(req uint64) uint64 {
	if req == 0 || req > cfg.maxVirtualSize {
		return cfg.maxVirtualSize
	}
	return req
}

// Validate implements sdk.Importer. It never follows backing files.
func (s *Store) Validate(ctx context.Context, path string, maxVirtualSize uint64) (sdk.Validation, error) {
	cfg, err := s.settings()
	if err != nil {
		return sdk.Validation{}, err
	}
	problems, err := validateFile(path, cfg.maxSize(maxVirtualSize))
	if err != nil {
		return sdk.Validation{}, err
	}
	resp := sdk.Validation{Problems: problems}
	if info, err := fileInfo(path); err == nil {
		resp.Disk = info
	}
	return resp, nil
}

// validateFile returns the problems that make path unacceptable as an
// imported disk, or an error if it cannot be examined at all.
func validateFile(path string, maxSize uint64) ([]string, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("validate: %q is not an absolute path: %w", path, sdk.ErrInvalidArgument)
	}
	err := qcow2.Validate(path, qcow2.ValidateOptions{MaxVirtualSize: int64(min(maxSize, 1<<62))})
	if err == nil {
		return nil, nil
	}
	var fe *qcow2.FormatError
	if errors.As(err, &fe) {
		return []string{fe.Error()}, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("validate %s: %w", path, sdk.ErrNotFound)
	}
	return nil, err
}

// Import implements sdk.Importer: it validates source, copies it in
// (reflink where possible), validates the copy (the source may change
// under us) and adopts it as a standalone disk.
func (s *Store) Import(ctx context.Context, req sdk.ImportRequest) (sdk.Disk, error) {
	cfg, err := s.settings()
	if err != nil {
		return sdk.Disk{}, err
	}
	id, src := req.ID, req.Source
	if err := checkDiskID("disk ID", id); err != nil {
		return sdk.Disk{}, err
	}
	maxSize := cfg.maxSize(req.MaxVirtualSize)
	refuse := func(problems []string) error {
		return fmt.Errorf("import %s as disk %s: %w: %s", src, id, sdk.ErrInvalidArgument, strings.Join(problems, "; "))
	}
	problems, err := validateFile(src, maxSize)
	if err != nil {
		return sdk.Disk{}, fmt.Errorf("import disk %s: %w", id, err)
	}
	if len(problems) > 0 {
		return sdk.Disk{}, refuse(problems)
	}
	if req.Snapshot != "" {
		return s.importSnapshot(ctx, cfg, req, maxSize, refuse)
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, false)
	if err != nil {
		return sdk.Disk{}, err
	}
	defer locks.release()
	op := newID()
	tmp := tempDiskFile(id, op)
	in := &intent{ID: op, Op: opImport, Disks: []string{id}, Disk: id, Temps: []string{tmp}}
	if err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(id)
		if err != nil {
			return err
		}
		if d != nil {
			return fmt.Errorf("import disk %s: %w", id, sdk.ErrAlreadyExists)
		}
		return t.putIntent(in)
	}); err != nil {
		return sdk.Disk{}, err
	}
	s.crashPoint(opImport, "journaled")
	done := false
	defer s.rollbackUnless(ctx, cfg, in, &done)

	if err := adoptFile(ctx, cfg.path(tmp), src, req.Move); err != nil {
		return sdk.Disk{}, fmt.Errorf("import disk %s: %w", id, err)
	}
	if err := chmodDurable(cfg.path(tmp), 0o644); err != nil {
		return sdk.Disk{}, fmt.Errorf("import disk %s: %w", id, err)
	}
	if problems, err := validateFile(cfg.path(tmp), maxSize); err != nil || len(problems) > 0 {
		if err != nil {
			return sdk.Disk{}, fmt.Errorf("import disk %s: %w", id, err)
		}
		return sdk.Disk{}, refuse(problems)
	}
	s.crashPoint(opImport, "copied")
	if err := renameDurable(cfg.path(tmp), cfg.path(diskFile(id))); err != nil {
		return sdk.Disk{}, fmt.Errorf("import disk %s: %w", id, err)
	}
	s.crashPoint(opImport, "renamed")
	if err := cfg.db.update(ctx, func(t *tx) error {
		if err := t.putDisk(&diskRecord{ID: id, CreatedAt: time.Now().UnixNano()}); err != nil {
			return err
		}
		return t.deleteIntent(op)
	}); err != nil {
		return sdk.Disk{}, fmt.Errorf("import disk %s: %w", id, err)
	}
	done = true
	s.crashPoint(opImport, "committed")
	return diskInfo(cfg, id)
}

// adoptFile puts an import's source at dst, a journaled temporary file of
// the store, durably: renamed there when the caller handed it over and it
// lies on the store's filesystem, copied otherwise. Either way the copy is
// validated again before it is used (the source could change under us).
func adoptFile(ctx context.Context, dst, src string, move bool) error {
	if move {
		if fi, err := os.Lstat(src); err == nil && fi.Mode().IsRegular() {
			err = os.Rename(src, dst)
			if err == nil {
				return syncFile(dst)
			}
			if !errors.Is(err, unix.EXDEV) {
				return err
			}
		}
	}
	_, err := filecopy.Copy(ctx, dst, src)
	return err
}

// importSnapshot adopts a validated copy of req.Source as a new immutable
// base and records it as snapshot req.Snapshot of disk req.ID. The base
// stands alone (no parent): the disk's chain is untouched, and restoring
// or cloning the snapshot overlays the base as for any other snapshot.
func (s *Store) importSnapshot(ctx context.Context, cfg *settings, req sdk.ImportRequest, maxSize uint64, refuse func([]string) error) (sdk.Disk, error) {
	id, name := req.ID, req.Snapshot
	if err := checkSnapshotName(name); err != nil {
		return sdk.Disk{}, err
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, false)
	if err != nil {
		return sdk.Disk{}, err
	}
	defer locks.release()
	op, base := newID(), newID()
	tmp := tempDiskFile(id, op)
	in := &intent{ID: op, Op: opImportSnapshot, Disks: []string{id}, Disk: id, Base: base, Name: name, Temps: []string{tmp}}
	if err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(id)
		if err != nil {
			return err
		}
		if d == nil {
			return fmt.Errorf("import snapshot %q: disk %s: %w", name, id, sdk.ErrNotFound)
		}
		if _, sn := d.snapshot(name); sn != nil {
			return fmt.Errorf("import snapshot %q of disk %s: %w", name, id, sdk.ErrAlreadyExists)
		}
		return t.putIntent(in)
	}); err != nil {
		return sdk.Disk{}, err
	}
	s.crashPoint(opImportSnapshot, "journaled")
	done := false
	defer s.rollbackUnless(ctx, cfg, in, &done)

	if err := adoptFile(ctx, cfg.path(tmp), req.Source, req.Move); err != nil {
		return sdk.Disk{}, fmt.Errorf("import snapshot %q of disk %s: %w", name, id, err)
	}
	if problems, err := validateFile(cfg.path(tmp), maxSize); err != nil || len(problems) > 0 {
		if err != nil {
			return sdk.Disk{}, fmt.Errorf("import snapshot %q of disk %s: %w", name, id, err)
		}
		return sdk.Disk{}, refuse(problems)
	}
	data, vsize, _, err := overlayUsage(cfg.path(tmp))
	if err != nil {
		return sdk.Disk{}, fmt.Errorf("import snapshot %q of disk %s: %w", name, id, err)
	}
	if err := chmodDurable(cfg.path(tmp), 0o444); err != nil {
		return sdk.Disk{}, fmt.Errorf("import snapshot %q of disk %s: %w", name, id, err)
	}
	s.crashPoint(opImportSnapshot, "copied")
	if err := renameDurable(cfg.path(tmp), cfg.path(baseFileByID(base))); err != nil {
		return sdk.Disk{}, fmt.Errorf("import snapshot %q of disk %s: %w", name, id, err)
	}
	s.crashPoint(opImportSnapshot, "renamed")
	created := req.SnapshotCreatedAt
	if created.IsZero() {
		created = time.Now()
	}
	if err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(id)
		if err != nil {
			return err
		}
		if d == nil {
			return fmt.Errorf("disk %s vanished during a snapshot import (store damaged)", id)
		}
		if err := t.putBase(&baseRecord{ID: base, Kind: kindFrozen, Refs: 1}); err != nil {
			return err
		}
		d.Snapshots = append(d.Snapshots, snapshotRecord{Name: name, Base: base, CreatedAt: created.UnixNano(), Size: data, VirtualSize: vsize})
		if err := t.putDisk(d); err != nil {
			return err
		}
		return t.deleteIntent(op)
	}); err != nil {
		return sdk.Disk{}, fmt.Errorf("import snapshot %q of disk %s: %w", name, id, err)
	}
	done = true
	s.crashPoint(opImportSnapshot, "committed")
	return diskInfo(cfg, id)
}

// RemoveDisk implements sdk.DiskBackend: it drops the disk and its
// snapshots and deletes every base nothing references any more. Removing a
// missing disk succeeds.
func (s *Store) RemoveDisk(ctx context.Context, id string) error {
	cfg, err := s.settings()
	if err != nil {
		return err
	}
	if err := checkDiskID("disk ID", id); err != nil {
		return err
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, false)
	if err != nil {
		return err
	}
	defer locks.release()
	var cleanup *intent
	if err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(id)
		if err != nil || d == nil {
			return err
		}
		garbage := []string{diskFile(id)}
		if err := t.deleteDisk(id); err != nil {
			return err
		}
		if err := t.decref(d.Base, &garbage); err != nil {
			return err
		}
		for _, sn := range d.Snapshots {
			if err := t.decref(sn.Base, &garbage); err != nil {
				return err
			}
		}
		cleanup = &intent{ID: newID(), Op: opRemove, Disks: []string{id}, Disk: id, Committed: true, Garbage: garbage}
		return t.putIntent(cleanup)
	}); err != nil {
		return fmt.Errorf("remove disk %s: %w", id, err)
	}
	if cleanup == nil {
		// Nothing recorded; an overlay file without a record is debris.
		if err := removeFiles(cfg, []string{diskFile(id)}); err != nil {
			return fmt.Errorf("remove disk %s: %w", id, err)
		}
		locks.removeLock(id)
		return nil
	}
	s.crashPoint(opRemove, "committed")
	if err := s.finishCleanup(ctx, cfg, cleanup, opRemove); err != nil {
		return fmt.Errorf("remove disk %s: %w", id, err)
	}
	locks.removeLock(id)
	return nil
}

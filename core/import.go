package core

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/boxarchive"
	"github.com/boxctl/boxctl/core/boxstatus"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/sdk"
)

// pendingImport marks a box whose import is in progress: recovery rolls it
// back (removes the box and whatever the storage plugin has of its disk).
const pendingImport = "importing"

// ImportOptions tune Import.
type ImportOptions struct {
	// Name names the new box; "" keeps the archive's.
	Name string
	// MaxDiskSize caps each disk and snapshot in the archive, uncompressed
	// (0: boxarchive.DefaultMaxDiskSize, 64 GiB).
	MaxDiskSize int64
}

// Import makes a new box from a box archive read from src (which need not
// seek): a new ID, the archive's configuration (and name, unless
// opts.Name), its disk and snapshots; the box is Stopped. The archive is
// untrusted: everything in it is checked before anything is created (the
// manifest, every member's name, size and checksum, the disks' qcow2
// structure, the configuration as Create checks it), and a refused import
// names what was wrong and leaves no box, disk or temporary file behind.
//
// The box's image comes from the archive when it holds one; otherwise the
// image with the archived digest must be cached, or the archived reference
// must pull as that digest.
func (r *Runtime) Import(ctx context.Context, src io.Reader, opts ImportOptions) (*Box, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	ar, err := boxarchive.NewReader(src, boxarchive.Limits{MaxDiskSize: opts.MaxDiskSize})
	if err != nil {
		return nil, archiveErr(err)
	}
	m := ar.Manifest()
	name := opts.Name
	if name == "" {
		name = m.Box.Name
	}
	b, err := r.newBox(BoxOptions{Name: name, Config: boxConfig(m.Box)})
	if err != nil {
		return nil, fmt.Errorf("import: the archived box %q: %w", m.Box.Name, err)
	}
	b.ImageDigest = m.Box.Image.Digest
	// An imported box is Stopped, and a stopped auto-remove box is removed
	// by the next command that opens the runtime: it would vanish at once.
	b.Config.AutoRemove = false
	// Refused before a byte of data is read.
	if err := r.store.View(ctx, func(tx *state.Tx) error { return importNameFree(tx, b.Name, opts.Name == "") }); err != nil {
		return nil, err
	}
	hasSnapshots := len(m.Members) > 1 && m.Members[1].Kind == boxarchive.KindSnapshot
	if err := r.checkImportPlugins(ctx, hasSnapshots); err != nil {
		return nil, err
	}
	work, err := r.newWorkDir(ctx, "import")
	if err != nil {
		return nil, err
	}
	defer work.remove()
	start := time.Now()
	ex, err := ar.Extract(ctx, work.dir)
	if err != nil {
		return nil, archiveErr(err)
	}
	extracted := time.Now()
	if err := r.validateDisks(ctx, ex); err != nil {
		return nil, err
	}
	r.log.Debug("import: archive extracted and checked", "extract", extracted.Sub(start), "validate", time.Since(extracted))
	var undo undoList
	defer undo.run()
	img, err := r.importImage(ctx, m, ex, &undo)
	if err != nil {
		return nil, err
	}
	cfg := img.Config
	b.Image = &model.ImageConfig{Entrypoint: cfg.Entrypoint, Cmd: cfg.Cmd, Env: cfg.Env, WorkingDir: cfg.WorkingDir, User: cfg.User, StopSignal: cfg.StopSignal}
	start = time.Now()
	if err := r.adopt(ctx, b, ex, opts.Name == ""); err != nil {
		return nil, err
	}
	undo.cancel()
	r.log.Debug("import: box recorded and disks adopted", "box", b.ID, "adopt", time.Since(start))
	return &Box{rt: r, id: b.ID}, nil
}

// importNameFree refuses a name in use (or one that is another box's ID).
func importNameFree(tx *state.Tx, name string, fromArchive bool) error {
	if owner := tx.NameTaken(name); owner != "" {
		how := "choose another with --name NAME (ImportOptions.Name)"
		if !fromArchive {
			how = "choose another name"
		}
		return fmt.Errorf("import: the name %q is already in use by box %s: %s, or remove that box: %w", name, shortID(owner), how, ErrAlreadyExists)
	}
	return nameShadowsID(tx, "import", name)
}

// checkImportPlugins refuses at once what the storage plugin cannot do.
func (r *Runtime) checkImportPlugins(ctx context.Context, snapshots bool) error {
	if err := r.plugins.Ready(ctx, sdk.RoleDisks, sdk.RoleImages); err != nil {
		return fmt.Errorf("import: %w", err)
	}
	info, err := r.plugins.Info(ctx, sdk.RoleDisks)
	if err != nil {
		return fmt.Errorf("storage plugin: %w", err)
	}
	if !info.Capabilities.Import {
		return fmt.Errorf("import: the storage plugin %q cannot import disks: %w", r.cfg.Storage, ErrUnsupported)
	}
	if snapshots && (!info.Capabilities.Snapshots || !info.Capabilities.SnapshotTransfer) {
		return fmt.Errorf("import: the archive holds snapshots, which the storage plugin %q cannot import: export the box again without --with-snapshots: %w", r.cfg.Storage, ErrUnsupported)
	}
	return nil
}

// validateDisks has the storage plugin check every extracted disk as the
// untrusted file it is (a qcow2 header can name any host file as its
// backing file), before any box exists.
func (r *Runtime) validateDisks(ctx context.Context, ex *boxarchive.Extracted) error {
	disks, err := r.plugins.Disks(ctx)
	if err != nil {
		return fmt.Errorf("storage plugin: %w", err)
	}
	files := append([]boxarchive.File{ex.Disk}, ex.Snapshots...)
	for _, f := range files {
		what := "the box's disk"
		if s := f.Member.Snapshot; s != nil {
			what = fmt.Sprintf("snapshot %q", s.Name)
		}
		v, err := disks.Validate(ctx, f.Path, config.MaxDiskSize)
		if err != nil {
			return fmt.Errorf("import: validate archive member %q (%s): %w", f.Member.Name, what, err)
		}
		if len(v.Problems) > 0 {
			return fmt.Errorf("import: archive member %q (%s) is not a safe disk image: %s: %w", f.Member.Name, what, strings.Join(v.Problems, "; "), ErrInvalidArgument)
		}
		if v.Disk.VirtualSize != f.Member.VirtualSize {
			return fmt.Errorf("import: archive member %q (%s): the manifest declares a virtual size of %d bytes, the disk image has %d: %w", f.Member.Name, what, f.Member.VirtualSize, v.Disk.VirtualSize, ErrInvalidArgument)
		}
	}
	return nil
}

// importImage makes the box's image available: already cached, loaded
// from the archive, or pulled by its reference, which must still name the
// archived digest. An image this import brought into the cache is removed
// again (by undo) if the import fails.
func (r *Runtime) importImage(ctx context.Context, m *boxarchive.Manifest, ex *boxarchive.Extracted, undo *undoList) (sdk.Image, error) {
	want := m.Box.Image
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return sdk.Image{}, fmt.Errorf("image plugin: %w", err)
	}
	if img, err := images.GetImage(ctx, want.Digest); err == nil {
		return img, nil
	} else if !errors.Is(err, sdk.ErrNotFound) {
		return sdk.Image{}, fmt.Errorf("import: look up image %s: %w", want.Digest, err)
	}
	var img sdk.Image
	if ex.Image != nil {
		info, err := r.plugins.Info(ctx, sdk.RoleImages)
		if err != nil {
			return sdk.Image{}, fmt.Errorf("image plugin: %w", err)
		}
		if !info.Capabilities.OCILayout {
			return sdk.Image{}, fmt.Errorf("import: the archive carries its image as an OCI layout, which the image plugin %q cannot read: %w", r.cfg.Images, ErrUnsupported)
		}
		img, err = r.pull(ctx, images, "oci-layout:"+ex.Image.Path+"@"+want.Digest, "", nil)
		if err != nil {
			return sdk.Image{}, fmt.Errorf("import: load the image in archive member %q: %w", ex.Image.Member.Name, err)
		}
	} else {
		_, notCached := images.GetImage(ctx, want.Reference)
		img, err = r.resolveImage(ctx, want.Reference, want.Platform, nil)
		if err != nil {
			return sdk.Image{}, fmt.Errorf("import: the box's image %s (%s) is not cached here and cannot be pulled: %w; export the box with --with-image to carry its image in the archive", want.Reference, want.Digest, err)
		}
		if notCached != nil {
			r.removeImageUnlessUsed(undo, img.Digest)
		}
		if img.Digest != want.Digest {
			return sdk.Image{}, fmt.Errorf("import: the box ran image %s as %s, but %s is %s here: pull that digest, or export the box with --with-image: %w", want.Reference, want.Digest, want.Reference, img.Digest, ErrInvalidState)
		}
		return img, nil
	}
	r.removeImageUnlessUsed(undo, img.Digest)
	if img.Digest != want.Digest {
		return sdk.Image{}, fmt.Errorf("import: the image in archive member %q is %s, not the box's %s: %w", ex.Image.Member.Name, img.Digest, want.Digest, ErrInvalidArgument)
	}
	return img, nil
}

// removeImageUnlessUsed registers the removal of an image the import
// pulled, for when the import fails.
func (r *Runtime) removeImageUnlessUsed(undo *undoList, digest string) {
	undo.add(func(ctx context.Context) {
		var used bool
		_ = r.store.View(ctx, func(tx *state.Tx) error {
			used = len(tx.Refs(imageBase(digest))) > 0
			return nil
		})
		if used {
			return
		}
		r.resolved.forget()
		if images, err := r.plugins.Images(ctx); err == nil {
			_, _ = images.RemoveImage(ctx, digest)
		}
	})
}

// adopt records the box (marked pendingImport, so that recovery rolls it
// back if this process dies), has the storage plugin import its disk and
// snapshots, and makes it Stopped. On failure it removes what it made.
func (r *Runtime) adopt(ctx context.Context, b *model.Box, ex *boxarchive.Extracted, nameFromArchive bool) (err error) {
	// The box's lock is taken before its record exists and held to the
	// end, so no other process's recovery takes the import for dead.
	lock, err := lockfile.Acquire(ctx, r.paths.lockPath(b.ID), false)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	defer lock.Release()
	b.Pending = pendingImport
	b.DiskCreated = true // whatever the plugin has under the ID is the import's
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		if err := importNameFree(tx, b.Name, nameFromArchive); err != nil {
			return err
		}
		if err := r.insertBox(tx, b); err != nil {
			return err
		}
		return tx.Ref(imageBase(b.ImageDigest), b.ID)
	})
	if err != nil {
		r.discardNew(b.ID)
		return err
	}
	defer func() {
		if err != nil {
			if rerr := r.removeLocked(context.WithoutCancel(ctx), b.ID); rerr != nil {
				r.log.Warn("import: roll back", "box", b.ID, "error", rerr)
			}
		}
	}()
	disks, err := r.plugins.Disks(ctx)
	if err != nil {
		return fmt.Errorf("storage plugin: %w", err)
	}
	// The extracted files are the import's own: the plugin may move them.
	if _, err := disks.Import(ctx, sdk.ImportRequest{ID: b.DiskID, Source: ex.Disk.Path, MaxVirtualSize: config.MaxDiskSize, Move: true}); err != nil {
		return fmt.Errorf("import: adopt the disk of archive member %q: %w", ex.Disk.Member.Name, err)
	}
	for _, s := range ex.Snapshots {
		req := sdk.ImportRequest{ID: b.DiskID, Source: s.Path, MaxVirtualSize: config.MaxDiskSize, Snapshot: s.Member.Snapshot.Name, SnapshotCreatedAt: s.Member.Snapshot.CreatedAt, Move: true}
		if _, err := disks.Import(ctx, req); err != nil {
			return fmt.Errorf("import: adopt snapshot %q of archive member %q: %w", s.Member.Snapshot.Name, s.Member.Name, err)
		}
	}
	var sizes map[string]uint64
	if len(ex.Snapshots) > 0 {
		snaps, err := r.plugins.Snapshots(ctx)
		if err != nil {
			return fmt.Errorf("storage plugin: %w", err)
		}
		list, err := snaps.ListSnapshots(ctx, b.DiskID)
		if err != nil {
			return fmt.Errorf("import: list the imported snapshots: %w", err)
		}
		sizes = map[string]uint64{}
		for _, s := range list {
			sizes[s.Name] = s.Size
		}
	}
	return r.store.Update(ctx, func(tx *state.Tx) error {
		for _, s := range ex.Snapshots {
			sn := s.Member.Snapshot
			if err := tx.PutSnapshot(state.Snapshot{BoxID: b.ID, Name: sn.Name, CreatedAt: sn.CreatedAt, SizeBytes: sizes[sn.Name]}); err != nil {
				return err
			}
		}
		// The same change as a clone's: a box that got a disk without
		// starting is Stopped.
		_, err := boxstatus.Cloned(tx, b.ID)
		return err
	})
}

// archiveErr makes the archive reader's refusals invalid-argument errors;
// I/O and context errors pass as they are.
func archiveErr(err error) error {
	var ae *boxarchive.Error
	if errors.As(err, &ae) {
		return fmt.Errorf("import: %w: %w", err, ErrInvalidArgument)
	}
	return fmt.Errorf("import: %w", err)
}

// undoList runs cleanups, newest first, unless cancelled.
type undoList struct{ fns []func(context.Context) }

func (u *undoList) add(fn func(context.Context)) { u.fns = append(u.fns, fn) }
func (u *undoList) cancel()                      { u.fns = nil }

func (u *undoList) run() {
	ctx := context.Background()
	for i := len(u.fns) - 1; i >= 0; i-- {
		u.fns[i](ctx)
	}
}

package imagestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/flatten"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/layer"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/rootfs"
)

// RootDisk returns the read-only ext4 root filesystem of a cached image,
// building it on first use. The disk is keyed by the image's layer chain, so
// images that share all layers share one disk; it is built once even when
// several processes ask at the same time (the others wait and reuse it).
// The file is immutable (mode 0444); callers attach it read-only.
func (s *Store) RootDisk(ctx context.Context, digest string) (RootDisk, error) {
	img, err := s.Image(digest)
	if err != nil {
		return RootDisk{}, err
	}
	key := img.chainID()
	dst := s.rootfsPath(key)
	if fi, err := os.Stat(dst); err == nil {
		return RootDisk{Path: dst, Size: fi.Size(), Image: img}, nil
	}

	gc, err := s.sharedLock(ctx)
	if err != nil {
		return RootDisk{}, err
	}
	defer gc.Release()
	lock, err := lockfile.Acquire(ctx, filepath.Join(s.blobs.LockDir(), "rootfs-"+key+".lock"), false)
	if err != nil {
		return RootDisk{}, err
	}
	defer func() {
		if _, err := os.Stat(dst); err == nil {
			lock.Remove()
		} else {
			lock.Release()
		}
	}()
	if fi, err := os.Stat(dst); err == nil {
		return RootDisk{Path: dst, Size: fi.Size(), Image: img}, nil
	}
	// The record was read before taking the GC lock; make sure it was not
	// removed meanwhile.
	if _, err := s.readRecord(mustHash(img.Digest)); err != nil {
		return RootDisk{}, err
	}
	size, err := s.buildRootDisk(ctx, img, dst)
	if isNoSpace(err) {
		return RootDisk{}, fmt.Errorf("%w on device while building the root disk of %s in %s: free space there (`boxctl image prune` removes images no box uses) or move boxctl's home to a larger file system, then try again; the partial disk was removed (%v)",
			ErrNoSpace, imageName(img), filepath.Dir(dst), err)
	}
	if err != nil {
		return RootDisk{}, fmt.Errorf("build root disk for %s: %w", img.Digest, err)
	}
	return RootDisk{Path: dst, Size: size, Image: img, Built: true}, nil
}

// isNoSpace reports a full file system (or an exhausted quota).
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// imageName names an image in messages: its reference and digest.
func imageName(img Image) string {
	if r := orDefault(img.Ref, strings.Join(img.Refs, ", ")); r != "" {
		return r + " (" + img.Digest + ")"
	}
	return img.Digest
}

func mustHash(s string) v1.Hash {
	h, _ := v1.NewHash(s)
	return h
}

// LayerPlan computes the flattening plan of a cached image (building any
// missing layer index); exposed for diagnostics and benchmarks. An image
// over the limit on unpacked size is refused.
func (s *Store) LayerPlan(ctx context.Context, img Image) (*flatten.Plan, error) {
	layers, err := s.stack(ctx, img)
	if err != nil {
		return nil, err
	}
	return flatten.NewPlan(layers)
}

// stack returns an image's layers with their indexes (building any that
// is missing), checked against the diff IDs of the image config and, as a
// whole, against the limit on unpacked size.
func (s *Store) stack(ctx context.Context, img Image) ([]flatten.Layer, error) {
	layers := make([]flatten.Layer, len(img.Layers))
	digests := make([]v1.Hash, len(img.Layers))
	indexes := make([]*layer.Index, len(img.Layers))
	for i, l := range img.Layers {
		d, err := v1.NewHash(l.Digest)
		if err != nil {
			return nil, fmt.Errorf("%w: image record %s: layer digest %q", ErrBadImage, img.Digest, l.Digest)
		}
		x, err := s.layerIndex(ctx, d)
		if err != nil {
			return nil, err
		}
		if x.DiffID.String() != l.DiffID {
			return nil, &layer.BadLayerError{Layer: d, Err: fmt.Errorf("uncompressed content hashes to %s but the image config lists diff_id %s", x.DiffID, l.DiffID)}
		}
		layers[i] = flatten.Layer{Digest: d, Index: x, Open: func() (io.ReadCloser, error) { return s.blobs.Open(d) }}
		digests[i], indexes[i] = d, x
	}
	if err := layer.CheckDeclared(digests, indexes, s.maxUnpacked); err != nil {
		return nil, err
	}
	return layers, nil
}

func (s *Store) buildRootDisk(ctx context.Context, img Image, dst string) (int64, error) {
	plan, err := s.LayerPlan(ctx, img)
	if err != nil {
		return 0, err
	}
	tmp := filepath.Join(s.blobs.TmpDir(), "rootfs-"+filepath.Base(dst)+".partial")
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	ok := false
	defer func() {
		f.Close()
		if !ok {
			os.Remove(tmp)
		}
	}()
	st, err := rootfs.Build(ctx, f, plan.WriteTar, rootfs.Options{MaxSize: maxDiskSize(plan)})
	if err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("sync root disk: %w", err)
	}
	if err := f.Chmod(0o444); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return 0, fmt.Errorf("commit root disk: %w", err)
	}
	ok = true
	d, err := os.Open(filepath.Dir(dst))
	if err == nil {
		d.Sync()
		d.Close()
	}
	return st.Size, nil
}

// maxDiskSize is a generous bound for tar2ext4's metadata reservation: the
// file data rounded to blocks, inode tables and directories, doubled.
func maxDiskSize(p *flatten.Plan) int64 {
	est := p.ContentBytes + int64(p.Files+p.Dirs)*(4096+256) + 64<<20
	if est*2 < rootfs.DefaultMaxSize {
		return rootfs.DefaultMaxSize
	}
	return est * 2
}

// layerIndex returns a layer's entry index, building it from the blob if it
// is missing or stale (another process may be doing the same; the per-layer
// lock makes it happen once).
func (s *Store) layerIndex(ctx context.Context, d v1.Hash) (*layer.Index, error) {
	if x, err := s.readIndex(d); err == nil {
		return x, nil
	}
	lock, err := lockfile.Acquire(ctx, filepath.Join(s.blobs.LockDir(), "index-"+d.Hex+".lock"), false)
	if err != nil {
		return nil, err
	}
	defer lock.Remove()
	if x, err := s.readIndex(d); err == nil {
		return x, nil
	}
	f, err := s.blobs.Open(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	x, err := layer.Scan(f, d, s.maxUnpacked)
	if err != nil {
		return nil, err
	}
	if err := s.writeIndex(d, x); err != nil {
		return nil, err
	}
	return x, nil
}

func (s *Store) readIndex(d v1.Hash) (*layer.Index, error) {
	f, err := os.Open(s.indexPath(d))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	x, err := layer.Decode(f)
	if err != nil {
		return nil, err
	}
	return x, nil
}

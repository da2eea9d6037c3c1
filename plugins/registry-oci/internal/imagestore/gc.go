package imagestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
)

// partialMaxAge is how long Prune keeps an interrupted download for a later
// pull to resume.
const partialMaxAge = 24 * time.Hour

// Remove deletes an image record and its references, then everything only it
// used: blobs, layer indexes, its root disk. It waits for pulls and disk
// builds in flight (in any process) to finish first.
func (s *Store) Remove(ctx context.Context, digest string) (PruneReport, error) {
	d, err := parseDigest(digest)
	if err != nil {
		return PruneReport{}, err
	}
	return s.collect(ctx, func(img Image) bool { return img.Digest != d.String() }, d.String())
}

// Prune deletes every image for which keep returns false (keep == nil
// deletes all), then collects garbage as Remove does, and removes stale
// temporary files: interrupted downloads older than a day and leftovers of
// crashed builds.
func (s *Store) Prune(ctx context.Context, keep func(digest string) bool) (PruneReport, error) {
	return s.collect(ctx, func(img Image) bool { return keep != nil && keep(img.Digest) }, "")
}

// PruneImages is Prune with a keep function that sees the whole image
// record, references included (Image.Refs), as it is under the GC lock: so
// "keep every tagged image" cannot race with a pull that tags a new one.
func (s *Store) PruneImages(ctx context.Context, keep func(img Image) bool) (PruneReport, error) {
	if keep == nil {
		keep = func(Image) bool { return false }
	}
	return s.collect(ctx, keep, "")
}

// Untag removes reference from the image with manifest digest: every record
// of the reference (for any platform) that points at that image. Once the
// image has no reference left it is removed as Remove does, and the report
// lists it; otherwise the report is empty. ErrNotFound if the reference does
// not point at the image.
func (s *Store) Untag(ctx context.Context, reference, digest string) (PruneReport, error) {
	r, err := ref.Parse(reference)
	if err != nil {
		return PruneReport{}, err
	}
	canonical := r.String()
	d, err := parseDigest(digest)
	if err != nil {
		return PruneReport{}, err
	}
	// Exclusive, so no pull can tag the image between the decision that
	// no reference is left and the removal.
	gc, err := lockfile.Acquire(ctx, s.gcLockPath(), false)
	if err != nil {
		return PruneReport{}, err
	}
	defer gc.Release()

	refs, err := s.readRefs()
	if err != nil {
		return PruneReport{}, err
	}
	untagged, left := 0, false
	for _, rr := range refs {
		if rr.Digest != d.String() {
			continue
		}
		if rr.Ref != canonical {
			left = true
			continue
		}
		if err := os.Remove(s.refPath(rr.Ref, rr.Platform)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return PruneReport{}, fmt.Errorf("untag %s: %w", canonical, err)
		}
		untagged++
	}
	if untagged == 0 {
		return PruneReport{}, fmt.Errorf("%w: %s does not refer to image %s in the cache", ErrNotFound, canonical, d)
	}
	if left {
		return PruneReport{}, nil
	}
	return s.collectLocked(func(img Image) bool { return img.Digest != d.String() }, "")
}

func (s *Store) collect(ctx context.Context, keep func(Image) bool, mustExist string) (PruneReport, error) {
	gc, err := lockfile.Acquire(ctx, s.gcLockPath(), false)
	if err != nil {
		return PruneReport{}, err
	}
	defer gc.Release()
	return s.collectLocked(keep, mustExist)
}

// collectLocked runs with the GC lock held exclusively.
func (s *Store) collectLocked(keep func(Image) bool, mustExist string) (PruneReport, error) {
	var rep PruneReport
	imgs, err := s.List()
	if err != nil {
		return rep, err
	}
	found := mustExist == ""
	liveBlobs := map[string]bool{}
	liveDisks := map[string]bool{}
	liveDigests := map[string]bool{}
	for _, img := range imgs {
		if img.Digest == mustExist {
			found = true
		}
		if !keep(img) {
			d := mustHash(img.Digest)
			if err := os.Remove(s.recordPath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return rep, fmt.Errorf("remove image %s: %w", img.Digest, err)
			}
			rep.Images = append(rep.Images, img.Digest)
			continue
		}
		liveDigests[img.Digest] = true
		liveDisks[img.chainID()] = true
		for _, b := range []string{img.Digest, img.IndexDigest, img.ConfigDigest} {
			if b != "" {
				liveBlobs[mustHash(b).Hex] = true
			}
		}
		for _, l := range img.Layers {
			liveBlobs[mustHash(l.Digest).Hex] = true
		}
	}
	if !found {
		return rep, fmt.Errorf("%w: image %s is not in the cache", ErrNotFound, mustExist)
	}

	refs, err := s.readRefs()
	if err != nil {
		return rep, err
	}
	for _, r := range refs {
		if !liveDigests[r.Digest] {
			os.Remove(s.refPath(r.Ref, r.Platform))
		}
	}
	err = s.blobs.Walk(func(d v1.Hash, size int64) error {
		if liveBlobs[d.Hex] {
			return nil
		}
		if err := s.blobs.Remove(d); err != nil {
			return err
		}
		rep.Blobs++
		rep.BytesFreed += size
		return nil
	})
	if err != nil {
		return rep, err
	}
	rep.BytesFreed += removeUnlisted(filepath.Join(s.dir, "index", "sha256"), func(name string) bool { return liveBlobs[name] })
	n := removeUnlisted(filepath.Join(s.dir, "rootfs", "v1"), func(name string) bool {
		key, _ := strings.CutSuffix(name, ".ext4")
		if !liveDisks[key] {
			rep.RootDisks++
			return false
		}
		return true
	})
	rep.BytesFreed += n
	s.cleanTmp()
	s.cleanLocks()
	return rep, nil
}

// removeUnlisted deletes the files in dir for which keep is false and
// returns the bytes freed.
func removeUnlisted(dir string, keep func(name string) bool) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var freed int64
	for _, e := range ents {
		if keep(e.Name()) {
			continue
		}
		if fi, err := e.Info(); err == nil {
			freed += fi.Size()
		}
		os.Remove(filepath.Join(dir, e.Name()))
	}
	return freed
}

// cleanTmp runs under the exclusive GC lock, so nothing in tmp/ is in use:
// everything goes except recent partial downloads, kept for resuming.
func (s *Store) cleanTmp() {
	dir := s.blobs.TmpDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "blob-") && strings.HasSuffix(e.Name(), ".partial") {
			if fi, err := e.Info(); err == nil && s.now().Sub(fi.ModTime()) < partialMaxAge {
				continue
			}
		}
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// cleanLocks removes lock files nobody holds (they are left behind by
// failed or killed operations).
func (s *Store) cleanLocks() {
	dir := s.blobs.LockDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		l, ok, err := lockfile.TryAcquire(filepath.Join(dir, e.Name()), false)
		if err == nil && ok {
			_ = l.Remove()
		}
	}
}

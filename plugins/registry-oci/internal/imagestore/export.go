package imagestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/boxctl/boxctl/internal/ctxio"
)

// ExportLayout writes the cached image with manifest digest as an OCI image
// layout directory at dest, which must not exist: oci-layout, an index.json
// listing the manifest (with its platform), and blobs/sha256/ holding the
// manifest, the config and the layers as cached, so that pulling
// oci-layout:DEST@DIGEST gives back the same image. Blobs are hard-linked
// from the cache where the filesystem allows (they are immutable), copied
// otherwise. The layout appears at dest complete or not at all.
func (s *Store) ExportLayout(ctx context.Context, digest, dest string) error {
	d, err := parseDigest(digest)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(dest) {
		return fmt.Errorf("%w: export image %s: destination %q is not an absolute path", ErrBadReference, digest, dest)
	}
	if _, err := os.Lstat(dest); err == nil {
		return fmt.Errorf("export image %s: %s: %w", digest, dest, fs.ErrExist)
	}
	// A shared GC lock: no Remove or Prune deletes the blobs meanwhile.
	gc, err := s.sharedLock(ctx)
	if err != nil {
		return err
	}
	defer gc.Release()
	img, err := s.readRecord(d)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".tmp-")
	if err != nil {
		return fmt.Errorf("export image %s: %w", digest, err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	blobDir := filepath.Join(tmp, "blobs", "sha256")
	if err := os.MkdirAll(blobDir, 0o755); err != nil {
		return fmt.Errorf("export image %s: %w", digest, err)
	}
	blobs := []string{img.Digest, img.ConfigDigest}
	for _, l := range img.Layers {
		blobs = append(blobs, l.Digest)
	}
	var manifestSize int64
	for _, b := range blobs {
		h, err := parseDigest(b)
		if err != nil {
			return fmt.Errorf("%w: image record %s names blob %q", ErrBadImage, digest, b)
		}
		size, err := s.exportBlob(ctx, h, filepath.Join(blobDir, h.Hex))
		if err != nil {
			return fmt.Errorf("export image %s: %w", digest, err)
		}
		if h == d {
			manifestSize = size
		}
	}
	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     "application/vnd.oci.image.index.v1+json",
		Manifests: []v1.Descriptor{{
			MediaType: types.MediaType(img.MediaType),
			Digest:    d,
			Size:      manifestSize,
			Platform:  &v1.Platform{OS: img.Platform.OS, Architecture: img.Platform.Architecture, Variant: img.Platform.Variant},
		}},
	}
	for name, v := range map[string]any{"index.json": index, "oci-layout": map[string]string{"imageLayoutVersion": "1.0.0"}} {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			return fmt.Errorf("export image %s: %w", digest, err)
		}
	}
	if err := os.Rename(tmp, dest); err != nil {
		return fmt.Errorf("export image %s: %w", digest, err)
	}
	ok = true
	return nil
}

// exportBlob puts cached blob h at dst and returns its size.
func (s *Store) exportBlob(ctx context.Context, h v1.Hash, dst string) (int64, error) {
	src, err := s.blobs.Open(h)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return 0, err
	}
	if err := os.Link(s.blobs.Path(h), dst); err == nil {
		return fi.Size(), nil
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, ctxio.Reader(ctx, src))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != fi.Size() {
		err = errors.New("blob changed size while it was copied")
	}
	return n, err
}

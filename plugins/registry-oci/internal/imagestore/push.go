package imagestore

import (
	"context"
	"fmt"
	"io"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/source"
)

// PushOptions tune Push.
type PushOptions struct {
	// Progress receives per-blob events: LayerDownloading while bytes go
	// out, LayerDone when a blob was sent, LayerCached for blobs the
	// registry had already. It is never called concurrently. May be nil.
	Progress func(ProgressEvent)
	// Status receives one-line messages; may be nil.
	Status func(string)
}

// Push uploads the cached image reference names (a registry reference,
// looked up for the default platform) to that reference's registry and
// repository, exactly as cached: the pushed manifest digest, which it
// returns, is the cached one. Blobs stay locked against Prune meanwhile.
func (s *Store) Push(ctx context.Context, reference string, opts PushOptions) (string, error) {
	r, err := ref.Parse(reference)
	if err != nil {
		return "", err
	}
	if r.Kind != ref.Registry {
		return "", fmt.Errorf("%w: %s is not a registry reference: push sends images to registries (name[:tag], e.g. registry.example.com/team/app:v2)", ErrBadReference, reference)
	}
	canonical := r.String()
	img, err := s.lookup(r, canonical, s.platform)
	if err != nil {
		return "", fmt.Errorf("%w: commit or pull it first", err)
	}
	gc, err := s.sharedLock(ctx)
	if err != nil {
		return "", err
	}
	defer gc.Release()
	manifest, err := s.blobs.ReadAll(mustHash(img.Digest), source.MaxManifestSize)
	if err != nil {
		return "", fmt.Errorf("manifest of %s: %w", img.Digest, err)
	}
	config, err := s.blobs.ReadAll(mustHash(img.ConfigDigest), maxConfigSize)
	if err != nil {
		return "", fmt.Errorf("config of %s: %w", img.Digest, err)
	}
	pm := newProgressMux(opts.Progress)
	c := &cachedImage{s: s, img: img, manifest: manifest, config: config, pm: pm, sent: map[string]bool{}}
	for i, l := range img.Layers {
		pm.emit(ProgressEvent{Layer: l.Digest, Index: i, State: LayerWaiting, Total: l.Size})
	}
	vimg, err := partial.CompressedToImage(c)
	if err != nil {
		return "", err
	}
	if opts.Status != nil {
		opts.Status(fmt.Sprintf("pushing %s (%s, %d layers) to %s", canonical, img.Digest, len(img.Layers), ref.Host(r.Name.Context().Registry)))
	}
	if err := source.Push(ctx, r.Name, s.reg, vimg); err != nil {
		return "", err
	}
	for i, l := range img.Layers {
		if !c.wasSent(l.Digest) {
			pm.emit(ProgressEvent{Layer: l.Digest, Index: i, State: LayerCached, Total: l.Size, Done: l.Size})
		}
	}
	if opts.Status != nil {
		opts.Status(fmt.Sprintf("pushed %s: %s", canonical, img.Digest))
	}
	return img.Digest, nil
}

// cachedImage serves a cached image's blobs as go-containerregistry's
// compressed image, byte for byte, counting what is read for progress.
type cachedImage struct {
	s                *Store
	img              Image
	manifest, config []byte
	pm               *progressMux

	mu   sync.Mutex
	sent map[string]bool
}

func (c *cachedImage) RawConfigFile() ([]byte, error) { return c.config, nil }
func (c *cachedImage) RawManifest() ([]byte, error)   { return c.manifest, nil }
func (c *cachedImage) MediaType() (types.MediaType, error) {
	return types.MediaType(c.img.MediaType), nil
}

func (c *cachedImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for i, l := range c.img.Layers {
		if l.Digest == h.String() {
			return &cachedLayer{c: c, index: i, l: l, d: h}, nil
		}
	}
	return nil, fmt.Errorf("%w: blob %s is not a layer of %s", ErrNotFound, h, c.img.Digest)
}

func (c *cachedImage) wasSent(d string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent[d]
}

type cachedLayer struct {
	c     *cachedImage
	index int
	l     Layer
	d     v1.Hash
}

func (l *cachedLayer) Digest() (v1.Hash, error) { return l.d, nil }
func (l *cachedLayer) Size() (int64, error)     { return l.l.Size, nil }
func (l *cachedLayer) MediaType() (types.MediaType, error) {
	if l.l.MediaType == "" {
		return types.OCILayer, nil
	}
	return types.MediaType(l.l.MediaType), nil
}

// Compressed opens the blob; go-containerregistry calls it only for blobs
// the registry lacks.
func (l *cachedLayer) Compressed() (io.ReadCloser, error) {
	f, err := l.c.s.blobs.Open(l.d)
	if err != nil {
		return nil, err
	}
	l.c.mu.Lock()
	l.c.sent[l.l.Digest] = true
	l.c.mu.Unlock()
	return &uploadReader{ReadCloser: f, l: l}, nil
}

// uploadReader reports a blob's upload progress as it is read.
type uploadReader struct {
	io.ReadCloser
	l    *cachedLayer
	done int64
	last int64
}

func (u *uploadReader) Read(p []byte) (int, error) {
	n, err := u.ReadCloser.Read(p)
	u.done += int64(n)
	l := u.l
	switch {
	case err == io.EOF:
		l.c.pm.emit(ProgressEvent{Layer: l.l.Digest, Index: l.index, State: LayerDone, Total: l.l.Size, Done: u.done})
	case u.done-u.last >= 1<<20 || u.last == 0:
		u.last = u.done
		l.c.pm.emit(ProgressEvent{Layer: l.l.Digest, Index: l.index, State: LayerDownloading, Total: l.l.Size, Done: u.done})
	}
	return n, err
}

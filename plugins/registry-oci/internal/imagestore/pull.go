package imagestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/blobstore"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/layer"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/source"
)

// maxConfigSize bounds an image config read into memory.
const maxConfigSize = 64 << 20

// Pull makes the image named by reference available in the cache and
// returns it. It downloads only blobs the cache lacks, verifying each
// against its digest as it streams and each layer's tar structure and
// uncompressed digest (diff ID); nothing of a failed pull becomes visible
// except complete, verified blobs (which a retry reuses). Concurrent pulls
// of the same image, from any number of processes, download each blob once.
func (s *Store) Pull(ctx context.Context, reference string, opts PullOptions) (Image, error) {
	r, err := ref.Parse(reference)
	if err != nil {
		return Image{}, err
	}
	plat, explicit := s.platform, false
	if opts.Platform != "" {
		if plat, err = ParsePlatform(opts.Platform); err != nil {
			return Image{}, err
		}
		explicit = true
	}
	canonical := r.String()
	if opts.Policy != PullAlways || r.IsDigest() {
		img, err := s.lookup(r, canonical, plat)
		if err == nil {
			opts.status("%s (%s) is in the cache as %s", canonical, plat, img.Digest)
			return img, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return Image{}, err
		}
		if opts.Policy == PullNever {
			return Image{}, fmt.Errorf("%w: image %s (%s) is not in the cache, and pulling is disabled", ErrNotFound, canonical, plat)
		}
	}

	gc, err := s.sharedLock(ctx)
	if err != nil {
		return Image{}, err
	}
	defer gc.Release()

	src, err := s.newSource(ctx, r)
	if err != nil {
		return Image{}, err
	}
	defer src.Close()
	res, err := src.Resolve(ctx, plat.v1())
	if err != nil {
		return Image{}, err
	}
	opts.status("resolved %s to %s", canonical, res.ManifestDigest)
	man, err := source.ParseManifest(res.Manifest)
	if err != nil {
		return Image{}, fmt.Errorf("%s from %s: %w", canonical, src.Describe(), err)
	}
	cfgBytes, err := s.fetchConfig(ctx, src, man.Config)
	if err != nil {
		return Image{}, fmt.Errorf("image config of %s: %w", canonical, err)
	}
	cfg, err := parseConfig(cfgBytes)
	if err != nil {
		return Image{}, fmt.Errorf("image config of %s: %w", canonical, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(man.Layers) {
		return Image{}, fmt.Errorf("%w: %s: the manifest lists %d layers but the config %d diff IDs", ErrBadImage, canonical, len(man.Layers), len(cfg.RootFS.DiffIDs))
	}
	imgPlat := Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	if explicit && !source.PlatformMatches(imgPlat.v1(), plat.v1()) {
		return Image{}, fmt.Errorf("%w: %s is an image for %s, not the requested %s", ErrNotFound, canonical, imgPlat, plat)
	}
	if err := runnable(canonical, imgPlat, len(man.Layers)); err != nil {
		return Image{}, err
	}

	if err := s.fetchLayers(ctx, src, man.Layers, cfg.RootFS.DiffIDs, opts.Progress); err != nil {
		return Image{}, err
	}
	img := s.newRecord(res, man, cfg, int64(len(cfgBytes)))
	// Each layer was checked against the limit on its own as it arrived;
	// now the whole stack, before the image becomes visible.
	if _, err := s.stack(ctx, img); err != nil {
		return Image{}, fmt.Errorf("%s: %w", canonical, err)
	}

	// The manifest last, so a failed pull leaves none behind.
	if err := s.blobs.Put(res.ManifestDigest, res.Manifest); err != nil {
		return Image{}, err
	}
	if res.Index != nil {
		if err := s.blobs.Put(res.IndexDigest, res.Index); err != nil {
			return Image{}, err
		}
	}
	if old, err := s.readRecord(res.ManifestDigest); err == nil {
		img.PulledAt = old.PulledAt
	} else if err := s.writeJSON(s.recordPath(res.ManifestDigest), img); err != nil {
		return Image{}, err
	}
	rr := refRecord{Ref: canonical, Platform: plat, Digest: img.Digest, IndexDigest: img.IndexDigest, UpdatedAt: s.now().UTC()}
	if err := s.writeJSON(s.refPath(canonical, plat), rr); err != nil {
		return Image{}, err
	}
	if refs, err := s.readRefs(); err == nil {
		img.Refs = refsOf(refs, img.Digest)
	}
	img.Ref = canonical
	return img, nil
}

// Lookup returns the cached image a reference was last pulled as, without
// contacting any source. platform may be empty for the default.
func (s *Store) Lookup(reference, platform string) (Image, error) {
	r, err := ref.Parse(reference)
	if err != nil {
		return Image{}, err
	}
	plat := s.platform
	if platform != "" {
		if plat, err = ParsePlatform(platform); err != nil {
			return Image{}, err
		}
	}
	return s.lookup(r, r.String(), plat)
}

func (s *Store) lookup(r ref.Reference, canonical string, plat Platform) (Image, error) {
	var rr refRecord
	if err := readJSON(s.refPath(canonical, plat), &rr); err == nil {
		if img, err := s.Image(rr.Digest); err == nil {
			img.Ref = canonical
			return img, nil
		}
	}
	// A registry digest reference may name a manifest pulled under a tag.
	if r.Kind == ref.Registry && r.IsDigest() {
		if img, err := s.Image(r.Name.Identifier()); err == nil {
			img.Ref = canonical
			return img, nil
		}
	}
	return Image{}, fmt.Errorf("%w: %s (%s) is not in the cache", ErrNotFound, canonical, plat)
}

func (s *Store) newSource(ctx context.Context, r ref.Reference) (source.Source, error) {
	switch r.Kind {
	case ref.OCILayout:
		return source.NewLayout(r)
	case ref.DockerArchive:
		return source.NewArchive(ctx, r, s.blobs.TmpDir(), s.maxUnpacked)
	}
	return source.NewRegistry(r.Name, s.reg)
}

// fetchConfig ingests the image config like any blob (verified, fetched
// once across processes) and returns its bytes.
func (s *Store) fetchConfig(ctx context.Context, src source.Source, desc v1.Descriptor) ([]byte, error) {
	if desc.Size > maxConfigSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than the %d allowed", ErrBadImage, desc.Digest, desc.Size, maxConfigSize)
	}
	if _, err := s.blobs.Ingest(ctx, desc.Digest, src.Fetcher(desc), blobstore.IngestOptions{Size: desc.Size}); err != nil {
		return nil, fmt.Errorf("from %s: %w", src.Describe(), err)
	}
	return s.blobs.ReadAll(desc.Digest, maxConfigSize)
}

// fetchLayers ingests the layers, a few at a time, each verified by digest,
// tar structure and diff ID. Each committed layer's index is saved for the
// root disk builder.
func (s *Store) fetchLayers(ctx context.Context, src source.Source, layers []v1.Descriptor, diffIDs []v1.Hash, progress func(ProgressEvent)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pm := newProgressMux(progress)
	for i, l := range layers {
		pm.emit(ProgressEvent{Layer: l.Digest.String(), Index: i, State: LayerWaiting, Total: l.Size})
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		sem      = make(chan struct{}, s.concurrency)
		started  = map[v1.Hash]bool{}
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
		mu.Unlock()
	}
	for i, l := range layers {
		if started[l.Digest] {
			// The same blob twice in one image; the first ingest covers it
			// (the diff IDs must agree, which the index check below sees).
			pm.emit(ProgressEvent{Layer: l.Digest.String(), Index: i, State: LayerCached, Total: l.Size, Done: l.Size})
			continue
		}
		started[l.Digest] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			if err := s.fetchLayer(ctx, src, i, l, diffIDs[i], pm); err != nil {
				fail(err)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

func (s *Store) fetchLayer(ctx context.Context, src source.Source, i int, l v1.Descriptor, diffID v1.Hash, pm *progressMux) error {
	var idx *layer.Index
	check := func(r io.Reader) error {
		x, err := layer.Scan(r, l.Digest, s.maxUnpacked)
		if err != nil {
			return err
		}
		if x.DiffID != diffID {
			return &layer.BadLayerError{Layer: l.Digest, Err: fmt.Errorf("uncompressed content hashes to %s but the image config lists diff_id %s", x.DiffID, diffID)}
		}
		idx = x
		return nil
	}
	res, err := s.blobs.Ingest(ctx, l.Digest, src.Fetcher(l), blobstore.IngestOptions{
		Size:     l.Size,
		Check:    check,
		Progress: pm.layer(i, l),
	})
	if err != nil {
		if errors.Is(err, context.Canceled) && ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("layer %d (%s) from %s: %w", i+1, l.Digest, src.Describe(), err)
	}
	if !res.Cached && idx != nil {
		// Best effort: a missing index is rebuilt by RootDisk.
		_ = s.writeIndex(l.Digest, idx)
	}
	return nil
}

func (s *Store) writeIndex(d v1.Hash, x *layer.Index) error {
	return blobstore.WriteFileAtomic(s.blobs.TmpDir(), s.indexPath(d), 0o444, x.Encode)
}

// progressMux serializes progress callbacks and thins out byte updates.
type progressMux struct {
	mu sync.Mutex
	fn func(ProgressEvent)
}

func newProgressMux(fn func(ProgressEvent)) *progressMux { return &progressMux{fn: fn} }

func (p *progressMux) emit(ev ProgressEvent) {
	if p.fn == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fn(ev)
}

const progressInterval = 100 * time.Millisecond

func (p *progressMux) layer(i int, l v1.Descriptor) func(blobstore.State, int64, int64) {
	var last time.Time
	lastState := blobstore.State(-1)
	return func(st blobstore.State, done, total int64) {
		if total < 0 {
			total = l.Size
		}
		now := time.Now()
		if st == blobstore.Downloading && st == lastState && done < total && now.Sub(last) < progressInterval {
			return
		}
		last, lastState = now, st
		p.emit(ProgressEvent{Layer: l.Digest.String(), Index: i, State: layerState(st), Total: total, Done: done})
	}
}

func layerState(st blobstore.State) LayerState {
	switch st {
	case blobstore.Waiting:
		return LayerWaiting
	case blobstore.Downloading:
		return LayerDownloading
	case blobstore.Verifying:
		return LayerVerifying
	case blobstore.Done:
		return LayerDone
	}
	return LayerCached
}

// runnable refuses images no box can run, before anything is downloaded:
// boxes are Linux guests and need a root file system.
func runnable(canonical string, p Platform, layers int) error {
	switch {
	case p.OS == "":
		return fmt.Errorf("%w: %s: the image config declares no os; boxes run Linux guests, so only images for linux can run", ErrBadImage, canonical)
	case p.OS != "linux":
		return fmt.Errorf("%w: %s is an image for %s; boxes run Linux guests, so only images for linux can run: choose a linux image (or platform, e.g. --platform linux/%s)", ErrBadImage, canonical, p, orDefault(p.Architecture, runtime.GOARCH))
	case layers == 0:
		return fmt.Errorf("%w: %s has no layers, so there is no root file system to boot; build the image FROM a base image (or add at least one layer)", ErrBadImage, canonical)
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func parseConfig(b []byte) (*v1.ConfigFile, error) {
	cfg, err := v1.ParseConfigFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%w: bad image config: %v", ErrBadImage, err)
	}
	return cfg, nil
}

func (s *Store) newRecord(res *source.Resolved, man *source.Manifest, cfg *v1.ConfigFile, cfgSize int64) Image {
	img := Image{
		Digest:       res.ManifestDigest.String(),
		MediaType:    string(res.MediaType),
		ConfigDigest: man.Config.Digest.String(),
		Size:         int64(len(res.Manifest)) + cfgSize,
		Platform:     Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant},
		PulledAt:     s.now().UTC(),
	}
	if res.Index != nil {
		img.IndexDigest = res.IndexDigest.String()
	}
	for i, l := range man.Layers {
		img.Size += l.Size
		img.Layers = append(img.Layers, Layer{Digest: l.Digest.String(), Size: l.Size, MediaType: string(l.MediaType), DiffID: cfg.RootFS.DiffIDs[i].String()})
	}
	c := cfg.Config
	img.Config = ImageConfig{
		Entrypoint:   c.Entrypoint,
		Cmd:          c.Cmd,
		Env:          c.Env,
		WorkingDir:   c.WorkingDir,
		User:         c.User,
		Labels:       c.Labels,
		StopSignal:   c.StopSignal,
		OS:           cfg.OS,
		Architecture: cfg.Architecture,
		Variant:      cfg.Variant,
		Created:      cfg.Created.Time,
	}
	for p := range c.ExposedPorts {
		img.Config.ExposedPorts = append(img.Config.ExposedPorts, p)
	}
	sort.Strings(img.Config.ExposedPorts)
	for v := range c.Volumes {
		img.Config.Volumes = append(img.Config.Volumes, v)
	}
	sort.Strings(img.Config.Volumes)
	return img
}

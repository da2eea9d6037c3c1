package imagestore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"

	"github.com/boxctl/boxctl/internal/ctxio"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/blobstore"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/layer"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/source"
)

// CommitOptions describe a new image: the cached image Base plus one layer.
type CommitOptions struct {
	// Base is the manifest digest of a cached image.
	Base string
	// LayerPath is an uncompressed layer tar (OCI whiteouts for deletions);
	// it is untrusted and validated like a pulled layer.
	LayerPath string
	// Reference is the new image's registry name[:tag].
	Reference string
	// Changes, if set, replaces parts of the base's config.
	Changes *ConfigChanges
	// Comment and Author go into the new history entry; Author also into
	// the config.
	Comment, Author string
}

// ConfigChanges are the parts of an image config a commit may replace:
// each field set (non-empty) replaces the base's.
type ConfigChanges struct {
	Entrypoint, Cmd, Env []string
	WorkingDir, User     string
	ExposedPorts         []string // "80/tcp"
	Labels               map[string]string
	StopSignal           string
}

// commitCreatedBy is the history entry's created_by.
const commitCreatedBy = "boxctl commit"

// Commit makes a new cached image from a cached image and one more layer,
// and tags it with o.Reference. The layer is validated (tar structure, path
// policy, size limit) and gzip-compressed into the cache; the new config
// has the base's with the layer's diff ID appended to rootfs.diff_ids, a
// history entry and a new creation time; the manifest keeps the base's
// media type family (Docker schema 2 or OCI). As with a pull, blobs become
// visible first, then the image record, then the tag: a failed commit
// leaves at most unreferenced blobs, which Prune removes.
func (s *Store) Commit(ctx context.Context, o CommitOptions) (Image, error) {
	r, err := ref.Parse(o.Reference)
	if err != nil {
		return Image{}, err
	}
	if r.Kind != ref.Registry || r.IsDigest() {
		return Image{}, fmt.Errorf("%w: %q cannot name a committed image: give a registry name with an optional tag, e.g. myapp:v2 or registry.example.com/team/app:v2",
			ErrBadReference, o.Reference)
	}
	canonical := r.String()
	bd, err := parseDigest(o.Base)
	if err != nil {
		return Image{}, err
	}
	gc, err := s.sharedLock(ctx)
	if err != nil {
		return Image{}, err
	}
	defer gc.Release()
	base, err := s.readRecord(bd)
	if err != nil {
		return Image{}, fmt.Errorf("commit onto %s: %w", bd, err)
	}
	baseMan, err := s.readManifest(base)
	if err != nil {
		return Image{}, err
	}
	baseCfg, err := s.blobs.ReadAll(mustHash(base.ConfigDigest), maxConfigSize)
	if err != nil {
		return Image{}, fmt.Errorf("config of %s: %w", base.Digest, err)
	}
	cfg, err := parseConfig(baseCfg)
	if err != nil {
		return Image{}, err
	}

	l, err := s.ingestLayer(ctx, o.LayerPath)
	if err != nil {
		return Image{}, err
	}
	docker := types.MediaType(base.MediaType) == types.DockerManifestSchema2
	now := s.now().UTC()
	cfg.Created = v1.Time{Time: now}
	if o.Author != "" {
		cfg.Author = o.Author
	}
	cfg.RootFS.Type = "layers"
	cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.diffID)
	cfg.History = append(cfg.History, v1.History{Created: v1.Time{Time: now}, CreatedBy: commitCreatedBy, Author: o.Author, Comment: o.Comment})
	o.Changes.apply(&cfg.Config)
	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		return Image{}, err
	}
	cfgDigest := source.DigestOf(cfgBytes)

	man := *baseMan
	man.Subject = nil
	man.Annotations = nil
	man.Config = v1.Descriptor{MediaType: baseMan.Config.MediaType, Size: int64(len(cfgBytes)), Digest: cfgDigest}
	layerType := types.OCILayer
	if docker {
		layerType = types.DockerLayer
	} else {
		man.MediaType = types.OCIManifestSchema1
		if man.Config.MediaType == "" {
			man.Config.MediaType = types.OCIConfigJSON
		}
		// Where the image came from, as image-spec's annotations say it.
		man.Annotations = map[string]string{"org.opencontainers.image.base.digest": base.Digest}
		if refs, err := s.readRefs(); err == nil {
			if names := refsOf(refs, base.Digest); len(names) > 0 {
				man.Annotations["org.opencontainers.image.base.name"] = names[0]
			}
		}
	}
	man.Layers = append(append([]v1.Descriptor{}, baseMan.Layers...), v1.Descriptor{MediaType: layerType, Size: l.size, Digest: l.digest})
	manBytes, err := json.Marshal(man)
	if err != nil {
		return Image{}, err
	}
	manDigest := source.DigestOf(manBytes)
	parsed, err := source.ParseManifest(manBytes)
	if err != nil {
		return Image{}, fmt.Errorf("the committed manifest: %w", err)
	}
	img := s.newRecord(&source.Resolved{Manifest: manBytes, ManifestDigest: manDigest, MediaType: man.MediaType}, parsed, cfg, int64(len(cfgBytes)))
	if _, err := s.stack(ctx, img); err != nil {
		return Image{}, fmt.Errorf("%s: %w", canonical, err)
	}
	if err := s.blobs.Put(cfgDigest, cfgBytes); err != nil {
		return Image{}, err
	}
	if err := s.blobs.Put(manDigest, manBytes); err != nil {
		return Image{}, err
	}
	if old, err := s.readRecord(manDigest); err == nil {
		img.PulledAt = old.PulledAt
	} else if err := s.writeJSON(s.recordPath(manDigest), img); err != nil {
		return Image{}, err
	}
	rr := refRecord{Ref: canonical, Platform: base.Platform, Digest: img.Digest, UpdatedAt: now}
	if err := s.writeJSON(s.refPath(canonical, base.Platform), rr); err != nil {
		return Image{}, err
	}
	if refs, err := s.readRefs(); err == nil {
		img.Refs = refsOf(refs, img.Digest)
	}
	img.Ref = canonical
	return img, nil
}

func (s *Store) readManifest(img Image) (*v1.Manifest, error) {
	b, err := s.blobs.ReadAll(mustHash(img.Digest), source.MaxManifestSize)
	if err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", img.Digest, err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%w: cached manifest %s: %v", ErrBadImage, img.Digest, err)
	}
	return m, nil
}

// committedLayer is a layer ingested by Commit.
type committedLayer struct {
	digest, diffID v1.Hash
	size           int64
}

// ingestLayer validates the uncompressed layer tar at path (as a pulled
// layer is: tar structure, path policy, unpacked size limit), writes it
// gzip-compressed into the blob store with its entry index, and returns
// its digest, diff ID and compressed size. One read of the file does it
// all.
func (s *Store) ingestLayer(ctx context.Context, path string) (committedLayer, error) {
	in, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return committedLayer{}, fmt.Errorf("%w: commit: the layer file %s does not exist", ErrNotFound, path)
	}
	if err != nil {
		return committedLayer{}, fmt.Errorf("commit: open the layer: %w", err)
	}
	defer in.Close()
	out, err := os.CreateTemp(s.blobs.TmpDir(), "commit-*.tar.gz")
	if err != nil {
		return committedLayer{}, err
	}
	ok := false
	defer func() {
		out.Close()
		if !ok {
			os.Remove(out.Name())
		}
	}()
	h := blobstore.NewDigester()
	cw := &countingWriter{w: io.MultiWriter(out, h)}
	// Speed over size: a commit is interactive, and a layer is compressed
	// once whatever registries it is pushed to later.
	zw, err := gzip.NewWriterLevel(cw, gzip.BestSpeed)
	if err != nil {
		return committedLayer{}, err
	}
	src := io.TeeReader(ctxio.Reader(ctx, in), zw)
	x, err := layer.Scan(src, v1.Hash{Algorithm: "file", Hex: path}, s.maxUnpacked)
	if err != nil {
		if ctx.Err() != nil {
			return committedLayer{}, ctx.Err()
		}
		return committedLayer{}, fmt.Errorf("commit: the changes are not a usable layer: %w", err)
	}
	if x.Compression != layer.Uncompressed {
		return committedLayer{}, fmt.Errorf("%w: commit: the layer file is %s-compressed; give an uncompressed tar", ErrBadImage, x.Compression)
	}
	if err := zw.Close(); err != nil {
		return committedLayer{}, fmt.Errorf("commit: compress the layer: %w", err)
	}
	if err := out.Close(); err != nil {
		return committedLayer{}, err
	}
	d := blobstore.Digest(h)
	if err := s.blobs.PutFile(d, out.Name()); err != nil {
		return committedLayer{}, err
	}
	ok = true
	// Best effort, as for pulls: RootDisk rebuilds a missing index.
	_ = s.writeIndex(d, x)
	return committedLayer{digest: d, diffID: x.DiffID, size: cw.n}, nil
}

func (c *ConfigChanges) apply(cfg *v1.Config) {
	if c == nil {
		return
	}
	if len(c.Entrypoint) > 0 {
		cfg.Entrypoint = c.Entrypoint
	}
	if len(c.Cmd) > 0 {
		cfg.Cmd = c.Cmd
	}
	if len(c.Env) > 0 {
		cfg.Env = c.Env
	}
	if c.WorkingDir != "" {
		cfg.WorkingDir = c.WorkingDir
	}
	if c.User != "" {
		cfg.User = c.User
	}
	if len(c.ExposedPorts) > 0 {
		cfg.ExposedPorts = map[string]struct{}{}
		for _, p := range c.ExposedPorts {
			cfg.ExposedPorts[p] = struct{}{}
		}
	}
	if len(c.Labels) > 0 {
		cfg.Labels = c.Labels
	}
	if c.StopSignal != "" {
		cfg.StopSignal = c.StopSignal
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

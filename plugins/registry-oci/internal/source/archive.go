package source

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/boxctl/boxctl/internal/ctxio"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/blobstore"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/layer"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
)

// Archive is a Source for a `docker save` archive (legacy layout, or the OCI
// layout plus manifest.json that Docker 25+ writes). The archive is read in
// place: its tar headers are scanned once and blobs are served as sections of
// the file. A compressed archive (docker save | gzip) is first decompressed
// to a temporary file, since blobs need random access.
type Archive struct {
	ref    ref.Reference
	f      *os.File
	tmp    string
	files  map[string]section
	blobs  map[v1.Hash]section
	config []byte
}

type section struct{ off, size int64 }

type archiveManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// NewArchive opens a docker-archive: reference. tmpDir receives the
// decompressed copy of a compressed archive, which may be at most
// maxSize bytes (0: no limit); Close removes it.
func NewArchive(ctx context.Context, r ref.Reference, tmpDir string, maxSize int64) (*Archive, error) {
	f, err := openRegular(r.Path, "docker archive")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: docker archive %s does not exist", errdefs.ErrNotFound, r.Path)
	}
	if err != nil {
		return nil, err
	}
	a := &Archive{ref: r, f: f, files: map[string]section{}, blobs: map[v1.Hash]section{}}
	if err := a.decompressIfNeeded(ctx, tmpDir, maxSize); err != nil {
		a.Close()
		return nil, err
	}
	if err := a.scan(); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

func (a *Archive) decompressIfNeeded(ctx context.Context, tmpDir string, maxSize int64) error {
	dr, comp, err := layer.Decompress(a.f)
	if err != nil {
		return fmt.Errorf("%w: docker archive %s: %v", errdefs.ErrBadImage, a.ref.Path, err)
	}
	defer dr.Close()
	if comp == layer.Uncompressed {
		_, err := a.f.Seek(0, io.SeekStart)
		return err
	}
	t, err := os.CreateTemp(tmpDir, "docker-archive-*.tar")
	if err != nil {
		return fmt.Errorf("decompress docker archive: %w", err)
	}
	a.tmp = t.Name()
	var src io.Reader = ctxio.Reader(ctx, dr)
	if maxSize > 0 {
		src = io.LimitReader(src, maxSize+1)
	}
	n, err := io.Copy(t, src)
	if err != nil {
		t.Close()
		return fmt.Errorf("%w: decompress docker archive %s: %v", errdefs.ErrBadImage, a.ref.Path, err)
	}
	if maxSize > 0 && n > maxSize {
		t.Close()
		return fmt.Errorf("%w: docker archive %s decompresses to more than %d bytes, the limit on an image's unpacked size (max_unpacked_size in the oci plugin's config block); decompress it yourself if you trust it, or raise the limit", errdefs.ErrTooLarge, a.ref.Path, maxSize)
	}
	if _, err := t.Seek(0, io.SeekStart); err != nil {
		t.Close()
		return err
	}
	a.f.Close()
	a.f = t
	return nil
}

func (a *Archive) scan() error {
	tr := tar.NewReader(a.f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: %s is not a docker archive (a tar from `docker save`): %v", errdefs.ErrBadImage, a.ref.Path, err)
		}
		if hdr.Typeflag != tar.TypeReg { // tar.Reader reports the old TypeRegA as TypeReg
			continue
		}
		off, err := a.f.Seek(0, io.SeekCurrent)
		if err != nil {
			return err
		}
		a.files[path.Clean(strings.TrimPrefix(hdr.Name, "./"))] = section{off, hdr.Size}
	}
	if _, ok := a.files["manifest.json"]; !ok {
		return fmt.Errorf("%w: %s has no manifest.json; is it really `docker save` output?", errdefs.ErrBadImage, a.ref.Path)
	}
	return nil
}

func (a *Archive) read(name string, limit int64) ([]byte, error) {
	s, ok := a.files[path.Clean(name)]
	if !ok {
		return nil, fmt.Errorf("%w: docker archive %s lacks %s", errdefs.ErrBadImage, a.ref.Path, name)
	}
	if s.size > limit {
		return nil, fmt.Errorf("%w: %s in docker archive %s is larger than %d bytes", errdefs.ErrBadImage, name, a.ref.Path, limit)
	}
	b := make([]byte, s.size)
	if _, err := a.f.ReadAt(b, s.off); err != nil {
		return nil, fmt.Errorf("read %s from docker archive: %w", name, err)
	}
	return b, nil
}

// Describe implements Source.
func (a *Archive) Describe() string { return "docker archive " + a.ref.Path }

// Close implements Source.
func (a *Archive) Close() error {
	err := a.f.Close()
	if a.tmp != "" {
		os.Remove(a.tmp)
	}
	return err
}

var hexDigest = regexp.MustCompile(`[0-9a-f]{64}`)

// Resolve implements Source. Archives hold single-platform images; the
// image store checks the config's platform.
func (a *Archive) Resolve(ctx context.Context, want v1.Platform) (*Resolved, error) {
	mb, err := a.read("manifest.json", MaxManifestSize)
	if err != nil {
		return nil, err
	}
	var ms []archiveManifest
	if err := json.Unmarshal(mb, &ms); err != nil {
		return nil, fmt.Errorf("%w: docker archive %s: bad manifest.json: %v", errdefs.ErrBadImage, a.ref.Path, err)
	}
	m, err := a.choose(ms)
	if err != nil {
		return nil, err
	}
	a.config, err = a.read(m.Config, 64<<20)
	if err != nil {
		return nil, err
	}
	var cfg struct {
		RootFS struct {
			DiffIDs []v1.Hash `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(a.config, &cfg); err != nil {
		return nil, fmt.Errorf("%w: docker archive %s: bad image config %s: %v", errdefs.ErrBadImage, a.ref.Path, m.Config, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("%w: docker archive %s: config lists %d layers, manifest.json %d", errdefs.ErrBadImage, a.ref.Path, len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	cd := DigestOf(a.config)
	a.blobs[cd] = a.files[path.Clean(m.Config)]
	man := ociManifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config: ociDesc{MediaType: types.OCIConfigJSON, Digest: cd.String(), Size: int64(len(a.config))}}
	for i, lp := range m.Layers {
		s, ok := a.files[path.Clean(lp)]
		if !ok {
			return nil, fmt.Errorf("%w: docker archive %s lacks layer %s", errdefs.ErrBadImage, a.ref.Path, lp)
		}
		d, mt, err := a.layerDigest(s, lp, cfg.RootFS.DiffIDs[i])
		if err != nil {
			return nil, err
		}
		a.blobs[d] = s
		man.Layers = append(man.Layers, ociDesc{MediaType: mt, Digest: d.String(), Size: s.size})
	}
	body, err := json.Marshal(man)
	if err != nil {
		return nil, err
	}
	return &Resolved{Manifest: body, ManifestDigest: DigestOf(body), MediaType: types.OCIManifestSchema1}, nil
}

type ociDesc struct {
	MediaType types.MediaType `json:"mediaType"`
	Digest    string          `json:"digest"`
	Size      int64           `json:"size"`
}

type ociManifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     types.MediaType `json:"mediaType"`
	Config        ociDesc         `json:"config"`
	Layers        []ociDesc       `json:"layers"`
}

func (a *Archive) choose(ms []archiveManifest) (archiveManifest, error) {
	var tags []string
	for _, m := range ms {
		tags = append(tags, m.RepoTags...)
	}
	list := strings.Join(tags, ", ")
	if list == "" {
		list = "none"
	}
	switch {
	case len(ms) == 0:
		return archiveManifest{}, fmt.Errorf("%w: docker archive %s holds no images", errdefs.ErrNotFound, a.ref.Path)
	case a.ref.Index >= 0:
		if a.ref.Index >= len(ms) {
			return archiveManifest{}, fmt.Errorf("%w: docker archive %s holds %d images, there is no @%d", errdefs.ErrNotFound, a.ref.Path, len(ms), a.ref.Index)
		}
		return ms[a.ref.Index], nil
	case a.ref.Tag != "":
		for _, m := range ms {
			for _, t := range m.RepoTags {
				if n, err := ref.NormalizeTag(t); err == nil && n == a.ref.Tag {
					return m, nil
				}
			}
		}
		return archiveManifest{}, fmt.Errorf("%w: no image tagged %s in docker archive %s (tags: %s)", errdefs.ErrNotFound, a.ref.Tag, a.ref.Path, list)
	case len(ms) > 1:
		return archiveManifest{}, fmt.Errorf("%w: docker archive %s holds %d images; choose one with docker-archive:%s:REPO:TAG (tags: %s) or docker-archive:%s:@N",
			errdefs.ErrBadReference, a.ref.Path, len(ms), a.ref.Path, list, a.ref.Path)
	}
	return ms[0], nil
}

// layerDigest works out a layer file's blob digest and media type without
// hashing it when possible: an uncompressed layer's digest is its diff ID,
// and compressed ones are stored under their digest. Ingest verifies either
// way.
func (a *Archive) layerDigest(s section, name string, diffID v1.Hash) (v1.Hash, types.MediaType, error) {
	_, comp, err := layer.Decompress(io.NewSectionReader(a.f, s.off, min(s.size, 64)))
	if err != nil {
		return v1.Hash{}, "", &layer.BadLayerError{Layer: diffID, Err: err}
	}
	switch comp {
	case layer.Uncompressed:
		return diffID, types.OCIUncompressedLayer, nil
	case layer.Zstd:
		return a.hashOrName(s, name, types.OCILayerZStd)
	}
	return a.hashOrName(s, name, types.OCILayer)
}

func (a *Archive) hashOrName(s section, name string, mt types.MediaType) (v1.Hash, types.MediaType, error) {
	if hx := hexDigest.FindAllString(name, -1); len(hx) > 0 {
		return v1.Hash{Algorithm: "sha256", Hex: hx[len(hx)-1]}, mt, nil
	}
	h := blobstore.NewDigester()
	if _, err := io.Copy(h, io.NewSectionReader(a.f, s.off, s.size)); err != nil {
		return v1.Hash{}, "", fmt.Errorf("hash %s in docker archive: %w", name, err)
	}
	return blobstore.Digest(h), mt, nil
}

// Fetcher implements Source.
func (a *Archive) Fetcher(desc v1.Descriptor) blobstore.Fetcher {
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
		s, ok := a.blobs[desc.Digest]
		if !ok {
			return nil, 0, fmt.Errorf("%w: blob %s is not in docker archive %s", errdefs.ErrNotFound, desc.Digest, a.ref.Path)
		}
		if offset > s.size {
			offset = 0
		}
		return io.NopCloser(io.NewSectionReader(a.f, s.off+offset, s.size-offset)), offset, nil
	}
}

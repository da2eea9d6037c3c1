// Package testimages builds container images for tests: layers from
// explicit tar entries (including whiteouts, opaque directories, hardlinks,
// device nodes and xattrs) in any compression, images and multi-platform
// indexes, and a loopback registry that counts requests and can misbehave
// on purpose (stall, corrupt, demand credentials).
package testimages

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Epoch is the default mtime of test entries.
var Epoch = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// Entry is one tar entry of a test layer.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg, TypeDir, ...
	Mode     int64
	Uid, Gid int
	Data     []byte
	Link     string
	Major    int64
	Minor    int64
	Xattrs   map[string]string
	ModTime  time.Time
}

// File is a regular file with mode 0644 owned by root.
func File(name, data string) Entry {
	return Entry{Name: name, Type: tar.TypeReg, Mode: 0o644, Data: []byte(data)}
}

// Dir is a directory with mode 0755.
func Dir(name string) Entry { return Entry{Name: name, Type: tar.TypeDir, Mode: 0o755} }

// Symlink points name at target.
func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Mode: 0o777, Link: target}
}

// Hardlink makes name another name for target.
func Hardlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeLink, Mode: 0o644, Link: target}
}

// CharDev is a character device node.
func CharDev(name string, major, minor int64) Entry {
	return Entry{Name: name, Type: tar.TypeChar, Mode: 0o666, Major: major, Minor: minor}
}

// Fifo is a named pipe.
func Fifo(name string) Entry { return Entry{Name: name, Type: tar.TypeFifo, Mode: 0o644} }

// Whiteout deletes p from lower layers.
func Whiteout(p string) Entry {
	return File(path.Join(path.Dir(p), ".wh."+path.Base(p)), "")
}

// Opaque hides lower-layer contents of dir.
func Opaque(dir string) Entry { return File(path.Join(dir, ".wh..wh..opq"), "") }

// With returns e with owner and mode changed.
func (e Entry) With(mode int64, uid, gid int) Entry {
	e.Mode, e.Uid, e.Gid = mode, uid, gid
	return e
}

// WithXattrs returns e with extended attributes.
func (e Entry) WithXattrs(x map[string]string) Entry {
	e.Xattrs = x
	return e
}

// Tar writes the entries as an uncompressed tar stream.
func Tar(entries []Entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		mt := e.ModTime
		if mt.IsZero() {
			mt = Epoch
		}
		h := &tar.Header{
			Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Uid: e.Uid, Gid: e.Gid,
			Linkname: e.Link, Devmajor: e.Major, Devminor: e.Minor, ModTime: mt,
			Size: int64(len(e.Data)),
		}
		if e.Type != tar.TypeReg {
			h.Size = 0
		}
		if len(e.Xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.Xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(h); err != nil {
			panic(fmt.Sprintf("testimages: tar header %q: %v", e.Name, err))
		}
		if h.Size > 0 {
			tw.Write(e.Data)
		}
	}
	tw.Close()
	return buf.Bytes()
}

// Compression of a test layer.
type Compression int

const (
	Gzip Compression = iota
	Zstd
	Uncompressed
)

// Layer is a v1.Layer over fixed bytes with a correct diff ID, in any
// compression (go-containerregistry's own helpers always gzip).
type Layer struct {
	blob, tar []byte
	mt        types.MediaType
	diffID    v1.Hash
}

// NewLayer builds a layer from entries.
func NewLayer(entries []Entry, c Compression) *Layer {
	return FromTar(Tar(entries), c)
}

// FromTar compresses an uncompressed tar stream into a layer.
func FromTar(t []byte, c Compression) *Layer {
	l := &Layer{tar: t, diffID: hash(t)}
	switch c {
	case Gzip:
		var b bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
		zw.Write(t)
		zw.Close()
		l.blob, l.mt = b.Bytes(), types.OCILayer
	case Zstd:
		zw, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
		l.blob, l.mt = zw.EncodeAll(t, nil), types.OCILayerZStd
		zw.Close()
	default:
		l.blob, l.mt = t, types.OCIUncompressedLayer
	}
	return l
}

// RawLayer is a layer whose blob is arbitrary bytes (for "not a tar"
// tests); its diff ID is claimed to be the blob's digest.
func RawLayer(blob []byte, mt types.MediaType) *Layer {
	return &Layer{blob: blob, tar: blob, mt: mt, diffID: hash(blob)}
}

func hash(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func (l *Layer) Digest() (v1.Hash, error) { return hash(l.blob), nil }
func (l *Layer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *Layer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l *Layer) Uncompressed() (io.ReadCloser, error) {
	if l.tar == nil && l.mt == types.OCILayer {
		// A layer too large to keep uncompressed (ZeroBomb).
		return gzip.NewReader(bytes.NewReader(l.blob))
	}
	return io.NopCloser(bytes.NewReader(l.tar)), nil
}
func (l *Layer) Size() (int64, error)                { return int64(len(l.blob)), nil }
func (l *Layer) MediaType() (types.MediaType, error) { return l.mt, nil }

// Blob returns the layer's blob bytes.
func (l *Layer) Blob() []byte { return l.blob }

// MustDigest returns the layer digest.
func (l *Layer) MustDigest() v1.Hash { return hash(l.blob) }

// Image assembles an OCI image of the layers with the given config and
// platform ("linux/amd64" style fields in cfg are overwritten by p).
func Image(layers []v1.Layer, cfg v1.Config, p v1.Platform) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, l := range layers {
		var err error
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l}); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Config = cfg
	cf.Created = v1.Time{Time: Epoch}
	return mutate.ConfigFile(img, cf)
}

// Index builds a multi-platform index of images (one per platform).
func Index(imgs map[string]v1.Image) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for plat, img := range imgs {
		p, err := v1.ParsePlatform(plat)
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
	}
	return idx, nil
}

// WriteLayout writes an OCI layout in dir with images tagged by their map
// key (org.opencontainers.image.ref.name); an empty key adds no tag.
func WriteLayout(dir string, imgs map[string]v1.Image) error {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	for tag, img := range imgs {
		var opts []layout.Option
		if tag != "" {
			opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}))
		}
		if err := p.AppendImage(img, opts...); err != nil {
			return err
		}
	}
	return nil
}

// WriteLayoutIndex adds a multi-platform index to a layout in dir.
func WriteLayoutIndex(dir, tag string, idx v1.ImageIndex) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return err
		}
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}))
}

// WriteDockerArchive writes a `docker save`-style archive (manifest.json,
// config and layer files) with go-containerregistry's tarball writer.
func WriteDockerArchive(file string, imgs map[string]v1.Image) error {
	m := map[name.Tag]v1.Image{}
	for t, img := range imgs {
		tag, err := name.NewTag(t)
		if err != nil {
			return err
		}
		m[tag] = img
	}
	return tarball.MultiWriteToFile(file, m)
}

// Package layer owns the reading of OCI/Docker layer blobs: recognizing their
// compression (gzip, zstd or none), validating their tar entries, and the
// compact per-layer entry index that the flattener plans with.
//
// Path policy (documented behaviour, same as Docker and containerd):
// entry names are cleaned; a leading "/" is dropped, so "/etc/x" means
// etc/x inside the image; a name that still climbs out of the root after
// cleaning ("../x", "a/../../x") is rejected as a bad layer. Hardlink targets
// follow the same rule. Symlink targets are data and are kept verbatim: they
// are resolved inside the guest, never on the host.
package layer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/blobstore"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
)

// Compression of a layer blob.
type Compression string

const (
	Uncompressed Compression = "none"
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
)

var (
	magicGzip  = []byte{0x1f, 0x8b}
	magicZstd  = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicXz    = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicBzip2 = []byte("BZh")
)

// Decompress recognizes the compression of r by its magic bytes (the media
// type in a manifest is advisory; real images mislabel it) and returns the
// uncompressed stream. Close releases decoder resources; it does not close r.
func Decompress(r io.Reader) (io.ReadCloser, Compression, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(6)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, "", err
	}
	switch {
	case bytes.HasPrefix(head, magicGzip):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, "", fmt.Errorf("bad gzip stream: %w", err)
		}
		return zr, Gzip, nil
	case bytes.HasPrefix(head, magicZstd):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, "", fmt.Errorf("bad zstd stream: %w", err)
		}
		return zstdCloser{zr}, Zstd, nil
	case bytes.HasPrefix(head, magicXz):
		return nil, "", fmt.Errorf("%w: xz-compressed layers are not supported (use gzip, zstd or plain tar)", errdefs.ErrUnsupported)
	case bytes.HasPrefix(head, magicBzip2):
		return nil, "", fmt.Errorf("%w: bzip2-compressed layers are not supported (use gzip, zstd or plain tar)", errdefs.ErrUnsupported)
	}
	return io.NopCloser(br), Uncompressed, nil
}

type zstdCloser struct{ *zstd.Decoder }

func (z zstdCloser) Close() error { z.Decoder.Close(); return nil }

// CleanName applies the path policy to a tar entry name and returns the
// image-relative path ("" for the root).
func CleanName(raw string) (string, error) {
	c := path.Clean(strings.TrimLeft(raw, "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("entry %q escapes the image root", raw)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// Type classifies an index entry.
type Type uint8

const (
	// Skip entries carry no file (PAX global headers, aufs metadata).
	Skip Type = iota
	Dir
	Reg
	Symlink
	Hardlink
	Char
	Block
	Fifo
	// Whiteout deletes Name from the layers below.
	Whiteout
	// Opaque hides everything below in directory Name.
	Opaque
)

func (t Type) String() string {
	return [...]string{"skip", "dir", "file", "symlink", "hardlink", "char device", "block device", "fifo", "whiteout", "opaque whiteout"}[t]
}

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// Entry is one tar entry of a layer, in stream order.
type Entry struct {
	Type Type
	// Name is the cleaned image-relative path ("" is the root). For
	// whiteouts it is the path deleted, for opaque markers the directory.
	Name string
	// Link is the cleaned target path of a hardlink, or the verbatim target
	// of a symlink.
	Link string
	// Size is a regular file's length.
	Size int64
}

// Index summarizes a layer: its entries in stream order (one per tar header,
// so positions match a second read of the same blob) and the digest of the
// uncompressed stream.
type Index struct {
	DiffID           v1.Hash
	UncompressedSize int64
	Compression      Compression
	Entries          []Entry
}

// BadLayerError says which layer and entry are wrong. It wraps
// errdefs.ErrBadImage.
type BadLayerError struct {
	Layer v1.Hash
	Entry string // may be empty
	Err   error
}

func (e *BadLayerError) Error() string {
	if e.Entry != "" {
		return fmt.Sprintf("bad layer %s: entry %q: %v", e.Layer, e.Entry, e.Err)
	}
	return fmt.Sprintf("bad layer %s: %v", e.Layer, e.Err)
}

func (e *BadLayerError) Unwrap() []error { return []error{errdefs.ErrBadImage, e.Err} }

// Scan reads a whole layer blob, validates every entry and returns its index.
// It reads r to the end, so the caller's hashing of r sees all bytes.
func Scan(r io.Reader, digest v1.Hash) (*Index, error) {
	bad := func(entry string, err error) error { return &BadLayerError{Layer: digest, Entry: entry, Err: err} }
	dr, comp, err := Decompress(r)
	if err != nil {
		return nil, bad("", err)
	}
	defer dr.Close()
	h := blobstore.NewDigester()
	cr := &countingReader{r: io.TeeReader(dr, h)}
	tr := tar.NewReader(cr)
	x := &Index{Compression: comp}
	last := ""
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if len(x.Entries) == 0 {
				return nil, bad("", fmt.Errorf("not a tar archive (after %s decompression): %v", comp, err))
			}
			return nil, bad("", fmt.Errorf("corrupt tar stream after entry %q: %v", last, err))
		}
		e, err := Classify(hdr)
		if err != nil {
			return nil, bad(hdr.Name, err)
		}
		last = hdr.Name
		x.Entries = append(x.Entries, e)
	}
	// The digest covers the whole uncompressed stream, including the padding
	// after the end-of-archive marker.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return nil, bad("", fmt.Errorf("read after end of archive: %v", err))
	}
	x.DiffID = blobstore.Digest(h)
	x.UncompressedSize = cr.n
	return x, nil
}

// Classify turns a tar header into an index entry, applying the path policy.
func Classify(hdr *tar.Header) (Entry, error) {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return Entry{Type: Skip}, nil
	}
	name, err := CleanName(hdr.Name)
	if err != nil {
		return Entry{}, err
	}
	e := Entry{Name: name}
	switch hdr.Typeflag {
	case tar.TypeDir:
		e.Type = Dir
	case tar.TypeReg, tar.TypeRegA, tar.TypeCont, tar.TypeGNUSparse:
		e.Type, e.Size = Reg, hdr.Size
	case tar.TypeSymlink:
		e.Type, e.Link = Symlink, hdr.Linkname
		if hdr.Linkname == "" {
			return Entry{}, errors.New("symlink with an empty target")
		}
	case tar.TypeLink:
		e.Type = Hardlink
		if e.Link, err = CleanName(hdr.Linkname); err != nil {
			return Entry{}, fmt.Errorf("hardlink target: %v", err)
		}
		if e.Link == "" {
			return Entry{}, errors.New("hardlink to the image root")
		}
	case tar.TypeChar:
		e.Type = Char
	case tar.TypeBlock:
		e.Type = Block
	case tar.TypeFifo:
		e.Type = Fifo
	default:
		return Entry{}, fmt.Errorf("unsupported tar entry type %q", string(hdr.Typeflag))
	}

	base := path.Base(name)
	switch {
	case name == "":
		if e.Type != Dir {
			return Entry{}, fmt.Errorf("the image root is a %s, not a directory", e.Type)
		}
	case base == whiteoutOpaque:
		e = Entry{Type: Opaque, Name: parent(name)}
	case strings.HasPrefix(name, whiteoutMeta) || strings.HasPrefix(base, whiteoutMeta):
		// aufs bookkeeping (.wh..wh.plnk/..., .wh..wh.aufs); never part of
		// the tree.
		e = Entry{Type: Skip}
	case strings.HasPrefix(base, whiteoutPrefix):
		target := base[len(whiteoutPrefix):]
		if target == "" || target == "." || target == ".." {
			return Entry{}, fmt.Errorf("whiteout of %q", target)
		}
		e = Entry{Type: Whiteout, Name: path.Join(parent(name), target)}
	}
	return e, nil
}

func parent(p string) string {
	d := path.Dir(p)
	if d == "." {
		return ""
	}
	return d
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

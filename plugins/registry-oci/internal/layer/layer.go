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
	"math"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/boxctl/boxctl/config"
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

// EntryOverhead is what every entry counts towards a layer's declared
// size besides its data: about what its tar header, inode and directory
// entry take, so that millions of empty files count too.
const EntryOverhead = 512

func (e Entry) declared() int64 { return addSize(max(e.Size, 0), EntryOverhead) }

// addSize adds sizes without overflowing.
func addSize(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// DeclaredSize is what the layer unpacks to by its own account: the sizes
// its tar headers declare for regular files (a sparse file counts its full
// size, holes included) plus EntryOverhead per entry. Nothing in the layer
// is counted twice and nothing is left out, so it bounds what building a
// root file system from the layer can write.
func (x *Index) DeclaredSize() int64 {
	var n int64
	for _, e := range x.Entries {
		n = addSize(n, e.declared())
	}
	return n
}

// LargestEntry returns the regular file with the largest declared size.
func (x *Index) LargestEntry() (Entry, bool) {
	var best Entry
	found := false
	for _, e := range x.Entries {
		if e.Type == Reg && (!found || e.Size > best.Size) {
			best, found = e, true
		}
	}
	return best, found
}

// TooLargeError: a layer (or the stack of layers up to it) declares more
// unpacked content than the limit allows. It wraps errdefs.ErrTooLarge.
type TooLargeError struct {
	Layer v1.Hash
	// Position is the layer's 1-based place in its image and Layers the
	// image's layer count; both 0 when checked one layer at a time.
	Position, Layers int
	// Size is the declared size counted when the limit was crossed:
	// this layer's, plus the layers below it when Position is set.
	Size  int64
	Limit int64
	// Entry is the layer's largest file (so far, when Scan stopped early).
	Entry     string
	EntrySize int64
}

func (e *TooLargeError) Error() string {
	var b strings.Builder
	if e.Position > 0 {
		fmt.Fprintf(&b, "layer %d of %d (%s) brings the image's unpacked size to %s", e.Position, e.Layers, e.Layer, formatSize(e.Size))
	} else {
		fmt.Fprintf(&b, "layer %s unpacks to at least %s", e.Layer, formatSize(e.Size))
	}
	if e.Entry != "" {
		fmt.Fprintf(&b, " (its largest file, %q, declares %s)", e.Entry, formatSize(e.EntrySize))
	}
	fmt.Fprintf(&b, ", more than the limit of %s on an image's unpacked size (max_unpacked_size). "+
		"If you trust this image, raise the limit in the oci plugin's config: plugin \"oci\" { config { max_unpacked_size = %q } }",
		formatSize(e.Limit), suggestLimit(e.Size))
	return b.String()
}

func (e *TooLargeError) Unwrap() error { return errdefs.ErrTooLarge }

// suggestLimit is a limit that would admit size: the next power of two
// GiB above it.
func suggestLimit(size int64) string {
	lim := int64(1 << 30)
	for lim <= size && lim < 1<<61 {
		lim <<= 1
	}
	return formatSize(lim)
}

func formatSize(n int64) string { return config.FormatSize(uint64(max(n, 0))) }

// CheckDeclared refuses a stack of layers (bottom first, each with its
// index) whose declared sizes add up to more than limit, naming the layer
// that crosses it. A limit of 0 or less means none.
func CheckDeclared(digests []v1.Hash, indexes []*Index, limit int64) error {
	if limit <= 0 {
		return nil
	}
	var total int64
	for i, x := range indexes {
		total = addSize(total, x.DeclaredSize())
		if total <= limit {
			continue
		}
		e := &TooLargeError{Layer: digests[i], Position: i + 1, Layers: len(indexes), Size: total, Limit: limit}
		if big, ok := x.LargestEntry(); ok {
			e.Entry, e.EntrySize = big.Name, big.Size
		}
		return e
	}
	return nil
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
// It reads r to the end, so the caller's hashing of r sees all bytes. If
// limit is positive, a layer whose declared size (see DeclaredSize) exceeds
// it is refused with a *TooLargeError as soon as an entry crosses it.
func Scan(r io.Reader, digest v1.Hash, limit int64) (*Index, error) {
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
	var declared int64
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
		declared = addSize(declared, e.declared())
		if limit > 0 && declared > limit {
			te := &TooLargeError{Layer: digest, Size: declared, Limit: limit}
			if big, ok := x.LargestEntry(); ok {
				te.Entry, te.EntrySize = big.Name, big.Size
			}
			return nil, te
		}
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
	case tar.TypeReg, tar.TypeCont, tar.TypeGNUSparse:
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

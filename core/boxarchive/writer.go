package boxarchive

import (
	"archive/tar"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/boxctl/boxctl/internal/ctxio"
)

// maxWindow is the largest zstd window this package reads (it writes 8
// MiB windows); a reader that allowed any window would let a hostile frame
// make it allocate gigabytes.
const maxWindow = 32 << 20

// Writer assembles an archive. Add the members (each is compressed to a
// temporary file at once, so the caller may delete its source right
// after), then WriteTo streams the archive; Close removes the temporary
// files. A Writer is not safe for concurrent use.
type Writer struct {
	dir     string
	members []staged
	snaps   int
	closed  bool
}

type staged struct {
	m    Member
	path string
}

// NewWriter returns a Writer whose temporary files go to dir, which must
// exist (and should be on a filesystem with room for the compressed
// members).
func NewWriter(dir string) *Writer { return &Writer{dir: dir} }

// AddDisk adds the box's flattened writable disk: a qcow2 file of
// virtualSize guest bytes. Exactly one disk is required.
func (w *Writer) AddDisk(ctx context.Context, path string, virtualSize uint64) error {
	for _, s := range w.members {
		if s.m.Kind == KindDisk {
			return errors.New("box archive: a second disk")
		}
	}
	return w.addFile(ctx, path, Member{Name: "disk.qcow2.zst", Kind: KindDisk, Format: FormatQcow2, VirtualSize: virtualSize})
}

// AddSnapshot adds one flattened snapshot of the disk. Add snapshots
// oldest first.
func (w *Writer) AddSnapshot(ctx context.Context, path string, virtualSize uint64, snap Snapshot) error {
	w.snaps++
	name := fmt.Sprintf("snapshot-%04d.qcow2.zst", w.snaps)
	return w.addFile(ctx, path, Member{Name: name, Kind: KindSnapshot, Format: FormatQcow2, VirtualSize: virtualSize, Snapshot: &snap})
}

// AddImage adds the box's image: layoutDir is an OCI image layout
// directory holding the image whose manifest digest is digest. Only the
// layout's own files (oci-layout, index.json, blobs/<algorithm>/<hex>)
// may be in it.
func (w *Writer) AddImage(ctx context.Context, layoutDir, digest string) error {
	files, err := layoutFiles(layoutDir)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeLayoutTar(ctx, pw, layoutDir, files)) }()
	defer pr.Close()
	return w.add(ctx, pr, Member{Name: "image.tar.zst", Kind: KindImage, Format: FormatOCILayout, ImageDigest: digest})
}

func (w *Writer) addFile(ctx context.Context, path string, m Member) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("box archive: add %s: %w", m.Kind, err)
	}
	defer f.Close()
	return w.add(ctx, f, m)
}

// add compresses src into a temporary file, recording its sizes and
// checksum in m.
func (w *Writer) add(ctx context.Context, src io.Reader, m Member) error {
	if w.closed {
		return errors.New("box archive: writer is closed")
	}
	tmp, err := os.CreateTemp(w.dir, ".member-*.zst")
	if err != nil {
		return fmt.Errorf("box archive: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	enc, err := zstd.NewWriter(tmp,
		// The fastest level (about zstd -1): on disk data, a mix of
		// incompressible files and text, it compressed as well as the
		// default level in half the time (bench/archive).
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithWindowSize(8<<20),
		// Concurrent streaming: blocks are compressed in the encoder's own
		// goroutines while this one reads and hashes. (Concurrent jobs,
		// WithConcurrentBlocks, measured slower on two busy cores.)
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithEncoderCRC(true),
		zstd.WithZeroFrames(true))
	if err != nil {
		return fmt.Errorf("box archive: %w", err)
	}
	h := newAsyncHash()
	defer h.Close()
	n, err := io.Copy(io.MultiWriter(enc, h), ctxio.Reader(ctx, src))
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("box archive: compress the %s: %w", m.Kind, err)
	}
	fi, err := tmp.Stat()
	if err != nil {
		return fmt.Errorf("box archive: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("box archive: %w", err)
	}
	m.Compression = CompressionZstd
	m.Size, m.CompressedSize = n, fi.Size()
	m.SHA256 = hex.EncodeToString(h.Sum())
	w.members = append(w.members, staged{m: m, path: tmp.Name()})
	ok = true
	return nil
}

// WriteTo writes the archive of box, created at created, to out: the
// manifest, then every member added, disk first, snapshots in the order
// added, image last. out need not seek (a pipe, stdout).
func (w *Writer) WriteTo(ctx context.Context, out io.Writer, box Box, created time.Time) error {
	if w.closed {
		return errors.New("box archive: writer is closed")
	}
	m := Manifest{Format: FormatName, Version: Version, Created: created.UTC(), Box: box}
	var order []staged
	for _, k := range []Kind{KindDisk, KindSnapshot, KindImage} {
		for _, s := range w.members {
			if s.m.Kind == k {
				order = append(order, s)
				m.Members = append(m.Members, s.m)
			}
		}
	}
	// What a reader with default limits refuses is not written.
	if err := m.check(Limits{MaxDiskSize: 1 << 62, MaxImageSize: 1 << 62, MaxSnapshots: 1 << 30}); err != nil {
		return fmt.Errorf("box archive: refusing to write an invalid archive: %w", err)
	}
	body, err := json.MarshalIndent(&m, "", "  ")
	if err != nil {
		return err
	}
	body = append(body, '\n')
	tw := tar.NewWriter(out)
	hdr := func(name string, size int64) *tar.Header {
		return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: m.Created, Format: tar.FormatPAX}
	}
	if err := tw.WriteHeader(hdr(ManifestName, int64(len(body)))); err != nil {
		return fmt.Errorf("box archive: write: %w", err)
	}
	if _, err := tw.Write(body); err != nil {
		return fmt.Errorf("box archive: write: %w", err)
	}
	for _, s := range order {
		if err := tw.WriteHeader(hdr(s.m.Name, s.m.CompressedSize)); err != nil {
			return fmt.Errorf("box archive: write %s: %w", s.m.Name, err)
		}
		f, err := os.Open(s.path)
		if err != nil {
			return fmt.Errorf("box archive: %w", err)
		}
		_, err = io.Copy(tw, ctxio.Reader(ctx, f))
		f.Close()
		if err != nil {
			return fmt.Errorf("box archive: write %s: %w", s.m.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("box archive: write: %w", err)
	}
	return nil
}

// Members lists what has been added so far, in the order WriteTo writes
// it.
func (w *Writer) Members() []Member {
	var out []Member
	for _, k := range []Kind{KindDisk, KindSnapshot, KindImage} {
		for _, s := range w.members {
			if s.m.Kind == k {
				out = append(out, s.m)
			}
		}
	}
	return out
}

// Close removes the Writer's temporary files. It is safe to call twice.
func (w *Writer) Close() error {
	var errs []error
	for _, s := range w.members {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	w.members, w.closed = nil, true
	return errors.Join(errs...)
}

// layoutFiles lists an OCI layout directory's files (relative, slash
// separated, sorted) and refuses anything else in it.
func layoutFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case rel == ".":
			return nil
		case d.IsDir():
			if rel == "blobs" || isBlobDir(rel) {
				return nil
			}
		case d.Type().IsRegular() && layoutPathOK(rel):
			files = append(files, rel)
			return nil
		}
		return fmt.Errorf("box archive: image layout %s: %s is not part of an OCI image layout (%s)", dir, rel, d.Type())
	})
	if err != nil {
		return nil, err
	}
	return files, nil
}

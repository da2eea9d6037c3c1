package qcow2

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/internal/filetype"
)

// maxChainDepth bounds backing chains (QEMU has no fixed limit; a deep
// chain here is almost certainly a loop or an attack).
const maxChainDepth = 64

// Formats understood for backing files and conversion.
const (
	FormatQcow2 = "qcow2"
	FormatRaw   = "raw"
)

// ResolveBacking returns the path QEMU would open for backing file name
// backing referenced by the image at imagePath: absolute names as they
// are, relative ones against the directory of imagePath (not the current
// directory). Like QEMU, it joins without cleaning the result, so the
// paths match qemu-img's "full-backing-filename".
func ResolveBacking(imagePath, backing string) string {
	if filepath.IsAbs(backing) {
		return backing
	}
	i := strings.LastIndexByte(imagePath, '/')
	if i < 0 {
		return backing
	}
	return imagePath[:i+1] + backing
}

func checkBackingName(name string) error {
	switch {
	case strings.HasPrefix(name, "json:"):
		return fmt.Errorf("%w: json: pseudo-protocol backing file names are not supported", ErrBackingFile)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w: backing file name contains a NUL byte", ErrBackingFile)
	}
	return nil
}

// probeFormat reports "qcow2" if r starts with the qcow2 magic, else "raw".
func probeFormat(r io.ReaderAt) (string, error) {
	var b [4]byte
	n, err := r.ReadAt(b[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	if n == 4 && string(b[:]) == "QFI\xfb" {
		return FormatQcow2, nil
	}
	return FormatRaw, nil
}

func (img *Image) openBacking(seen []os.FileInfo, depth int) error {
	name := img.h.backingFile
	if err := checkBackingName(name); err != nil {
		return err
	}
	if depth+1 >= maxChainDepth {
		return fmt.Errorf("%w: backing chain deeper than %d", ErrBackingFile, maxChainDepth)
	}
	path := ResolveBacking(img.path, name)
	l, format, err := openLayer(path, img.h.backingFormat, depth+1, seen)
	if err != nil {
		return fmt.Errorf("%w %q (resolved to %s): %w", ErrBackingFile, name, path, err)
	}
	img.backing, img.backingPath, img.backingFormat = l, path, format
	return nil
}

// openLayer opens path read-only as a chain element in the given format
// ("" probes). Depth 0 is the top of a chain (a conversion source, which
// may be a block device); deeper elements are backing files.
func openLayer(path, format string, depth int, seen []os.FileInfo) (layer, string, error) {
	var (
		f   *os.File
		fi  os.FileInfo
		err error
	)
	if depth > 0 {
		f, fi, err = openBackingFile(path)
	} else {
		f, fi, err = openStat(path)
	}
	if err != nil {
		return nil, "", err
	}
	for _, s := range seen {
		if os.SameFile(s, fi) {
			f.Close()
			return nil, "", fmt.Errorf("%w: backing chain loops back to %s", ErrBackingFile, path)
		}
	}
	if format == "" {
		if format, err = probeFormat(f); err != nil {
			f.Close()
			return nil, "", err
		}
	}
	switch format {
	case FormatRaw:
		size, err := fileSize(f, fi)
		if err != nil {
			f.Close()
			return nil, "", err
		}
		return &rawLayer{f: f, size: size, path: path}, format, nil
	case FormatQcow2:
		img, err := newImage(f, fi.Size(), OpenOptions{})
		if err != nil {
			f.Close()
			return nil, "", err
		}
		img.path = path
		if img.h.backingFile != "" {
			if err := img.openBacking(append(seen, fi), depth); err != nil {
				img.Close()
				return nil, "", err
			}
		}
		return img, format, nil
	default:
		f.Close()
		return nil, "", fmt.Errorf("%w: backing format %q (only raw and qcow2)", ErrUnsupported, format)
	}
}

func openStat(path string) (*os.File, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// openBackingFile opens a file a backing reference names, read-only. The
// name comes from an image header, which the store's caller may have
// crafted: a FIFO there would block the open (and every read after it), a
// device would be read as a disk and a final symbolic link could point
// anywhere. So the open neither blocks nor follows a final link, and
// anything but a regular file is refused. The errors do not repeat the
// path: callers wrap them with ErrBackingFile and the path.
func openBackingFile(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, nil, errors.New("a symbolic link, and backing files are opened without following links")
	}
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s, not a regular file (a backing file must be one)", filetype.Name(fi.Mode()))
	}
	return f, fi, nil
}

func fileSize(f *os.File, fi os.FileInfo) (int64, error) {
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	return f.Seek(0, io.SeekEnd) // block devices
}

// rawLayer is a raw image used as a backing file or conversion source.
type rawLayer struct {
	f    *os.File
	size int64
	path string
}

func (r *rawLayer) Size() int64 { return r.size }

func (r *rawLayer) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.size-off))
	if err := readFullAt(r.f, p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (r *rawLayer) Close() error { return r.f.Close() }

// chainExtents uses SEEK_DATA/SEEK_HOLE so that holes in a sparse raw
// file are reported as zeros.
func (r *rawLayer) chainExtents(off, length int64, depth int, fn func(Extent) error) error {
	end := min(off+length, r.size)
	fd := int(r.f.Fd())
	for off < end {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end
		} else if err != nil {
			// No SEEK_DATA support: everything is data.
			return fn(Extent{Offset: off, Length: end - off, Kind: ExtentData, Depth: depth})
		}
		data = min(data, end)
		if data > off {
			if err := fn(Extent{Offset: off, Length: data - off, Kind: ExtentZero, Depth: depth}); err != nil {
				return err
			}
			off = data
			if off >= end {
				break
			}
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		hole = min(hole, end)
		if hole <= off {
			hole = end
		}
		if err := fn(Extent{Offset: off, Length: hole - off, Kind: ExtentData, Depth: depth}); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// SetBacking rewrites the backing file reference of the qcow2 image at
// path without touching its data (like qemu-img rebase -u). backing is
// stored as given (relative names are resolved against the image's
// directory when opened); format must be "raw" or "qcow2". An empty
// backing removes the reference, making the image standalone. The image
// must not be open for writing elsewhere.
func SetBacking(path, backing, format string) error {
	if err := setBacking(path, backing, format); err != nil {
		return fmt.Errorf("set backing file of %s: %w", path, err)
	}
	return nil
}

func setBacking(path, backing, format string) error {
	if backing != "" {
		if err := checkBackingName(backing); err != nil {
			return err
		}
		if format != FormatRaw && format != FormatQcow2 {
			return fmt.Errorf("%w: backing format %q (want raw or qcow2)", ErrUnsupported, format)
		}
	} else {
		format = ""
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	h, err := readHeader(f, fi.Size())
	if err != nil {
		return err
	}
	if h.incompat&incompatCorrupt != 0 {
		return corruptf("corrupt bit set")
	}
	oldEnd := h.extAreaEnd
	if h.backingFileOffset != 0 {
		oldEnd = max(oldEnd, int64(h.backingFileOffset)+int64(h.backingFileSize))
	}
	h.backingFile, h.backingFormat = backing, format
	buf, err := h.encode(h.clusterSize())
	if err != nil {
		return err
	}
	if int64(len(buf)) < oldEnd {
		buf = append(buf, make([]byte, oldEnd-int64(len(buf)))...)
	}
	if _, err := f.WriteAt(buf, 0); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

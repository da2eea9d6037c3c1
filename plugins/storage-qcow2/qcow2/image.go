package qcow2

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// L1/L2 entry bits.
const (
	oflagCopied     = uint64(1) << 63
	oflagCompressed = uint64(1) << 62
	oflagZero       = uint64(1) << 0
	offsetMask      = uint64(0x00fffffffffffe00) // bits 9-55
	l1ReservedMask  = uint64(0x7f000000000001ff)
	l2ReservedMask  = uint64(0x3f000000000001fe)
)

// defaultL2CacheBytes bounds memory used for cached L2 tables per image.
const defaultL2CacheBytes = 32 << 20

// fileIO is what an Image needs from its file; *os.File satisfies it.
type fileIO interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Close() error
}

// layer is one element of a backing chain: a qcow2 *Image or a raw file.
type layer interface {
	io.ReaderAt
	Size() int64
	// chainExtents reports, for [off, off+length), which ranges hold data
	// and which read as zeros, resolving backing files. depth is the
	// chain depth of this layer.
	chainExtents(off, length int64, depth int, fn func(Extent) error) error
	Close() error
}

// Image is an open qcow2 image, optionally with its backing chain.
//
// An Image is safe for concurrent use: ReadAt calls run in parallel with
// each other; WriteAt, Resize, Flush and Close are serialized with each
// other and with reads by an internal read-write mutex.
type Image struct {
	path     string
	f        fileIO
	writable bool
	h        *header

	cs, bits, l2n int64
	size          int64
	l1            []uint64
	l1Clusters    int64 // clusters holding the L1 table on disk

	csizeShift uint
	csizeMask  uint64
	coffMask   uint64

	backing       layer
	backingPath   string // resolved path, "" if none
	backingFormat string

	cache *l2Cache
	rc    *refcounts // nil when read-only

	mu       sync.RWMutex
	fileSize int64 // highest byte known to be in the file; guarded by mu
	closed   bool
	failed   error // sticky: a write failed half way, metadata may be stale
	noSync   bool  // Close does not fsync (Convert with NoSync)

	bufPool   sync.Pool
	flatePool sync.Pool
}

// OpenOptions control Open.
type OpenOptions struct {
	// Writable opens the image read-write. Backing files are always opened
	// read-only.
	Writable bool
	// NoBacking does not open the backing chain: reads of clusters that
	// are not allocated in this image return zeros, and ChainExtents
	// reports them as zero.
	NoBacking bool
	// L2CacheBytes bounds the memory used to cache L2 tables
	// (default 32 MiB).
	L2CacheBytes int
}

// Open opens a qcow2 image and, unless opts.NoBacking, its backing chain.
// Relative backing file names are resolved against the directory of the
// image that references them, as QEMU does.
func Open(path string, opts OpenOptions) (*Image, error) {
	img, err := openImage(path, opts, 0, nil)
	if err != nil {
		return nil, fmt.Errorf("open qcow2 %s: %w", path, err)
	}
	return img, nil
}

func openImage(path string, opts OpenOptions, depth int, seen []os.FileInfo) (*Image, error) {
	flag := os.O_RDONLY
	if opts.Writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	img, err := newImage(f, fi.Size(), opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	img.path = path
	if img.h.backingFile != "" && !opts.NoBacking {
		if err := img.openBacking(append(seen, fi), depth); err != nil {
			img.Close()
			return nil, err
		}
	}
	return img, nil
}

// newImage parses the image metadata from f. It never allocates more than
// a small multiple of fileSize (plus one cluster) on hostile input.
func newImage(f fileIO, fileSize int64, opts OpenOptions) (*Image, error) {
	h, err := readHeader(f, fileSize)
	if err != nil {
		return nil, err
	}
	img := &Image{
		f:        f,
		writable: opts.Writable,
		h:        h,
		cs:       h.clusterSize(),
		bits:     int64(h.clusterBits),
		l2n:      h.l2Entries(),
		size:     int64(h.size),
		fileSize: fileSize,
	}
	img.csizeShift = uint(62 - (h.clusterBits - 8))
	img.csizeMask = (uint64(1) << (h.clusterBits - 8)) - 1
	img.coffMask = (uint64(1) << img.csizeShift) - 1
	cs := img.cs
	img.bufPool.New = func() any { b := make([]byte, cs); return &b }
	cacheBytes := opts.L2CacheBytes
	if cacheBytes <= 0 {
		cacheBytes = defaultL2CacheBytes
	}
	img.cache = newL2Cache(cacheBytes / int(cs))

	// The L1 table lies inside the file (checked by readHeader).
	raw := make([]byte, int64(h.l1Size)*8)
	if err := readFullAt(f, raw, int64(h.l1TableOffset)); err != nil {
		return nil, fmt.Errorf("read L1 table at %#x: %w", h.l1TableOffset, err)
	}
	img.l1 = make([]uint64, h.l1Size)
	for i := range img.l1 {
		img.l1[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	img.l1Clusters = (int64(h.l1Size)*8 + cs - 1) / cs

	if opts.Writable {
		if err := img.initWritable(); err != nil {
			return nil, err
		}
	}
	return img, nil
}

func (img *Image) initWritable() error {
	h := img.h
	switch {
	case h.incompat&incompatDirty != 0:
		return unsupportedf("dirty bit set (lazy refcounts were in use and the image was not closed cleanly); repair it with qemu-img check -r all")
	case h.incompat&incompatCorrupt != 0:
		return corruptf("corrupt bit set; repair it with qemu-img check -r all")
	case h.nbSnapshots != 0:
		return unsupportedf("writing to an image with %d internal snapshots", h.nbSnapshots)
	}
	img.rc = newRefcounts(img.f, uint64(img.cs), h.refcountOrder, func() uint64 { return uint64(img.fileSize) })
	img.rc.onTableMove = img.writeRefTableHeader
	if err := img.rc.loadTable(h.refcountTableOffset, uint64(h.refcountTableClusters)); err != nil {
		return err
	}
	if err := img.rc.computeEnd(); err != nil {
		return err
	}
	if h.autoclear != 0 {
		// We do not maintain whatever the autoclear features describe
		// (e.g. dirty bitmaps), so the spec requires clearing them before
		// writing.
		var b [8]byte
		if _, err := img.f.WriteAt(b[:], offAutoclear); err != nil {
			return fmt.Errorf("clear autoclear features: %w", err)
		}
		h.autoclear = 0
	}
	return nil
}

func (img *Image) writeRefTableHeader(off, clusters uint64) error {
	var b [12]byte
	binary.BigEndian.PutUint64(b[0:], off)
	binary.BigEndian.PutUint32(b[8:], uint32(clusters))
	if _, err := img.f.WriteAt(b[:], offRefTableOffset); err != nil {
		return fmt.Errorf("update refcount table location in header: %w", err)
	}
	img.h.refcountTableOffset, img.h.refcountTableClusters = off, uint32(clusters)
	return nil
}

// Size returns the virtual size in bytes.
func (img *Image) Size() int64 {
	img.mu.RLock()
	defer img.mu.RUnlock()
	return img.size
}

// ClusterSize returns the cluster size in bytes.
func (img *Image) ClusterSize() int64 { return img.cs }

// Path returns the path the image was opened with.
func (img *Image) Path() string { return img.path }

// Backing returns the backing file name as recorded in the header, and
// the backing format ("" if not recorded).
func (img *Image) Backing() (file, format string) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	return img.h.backingFile, img.h.backingFormat
}

// run kinds
const (
	runUnalloc = iota
	runZero
	runData
	runCompressed
)

type run struct {
	kind   int
	length int64
	host   int64  // runData: host offset of the first byte
	entry  uint64 // runCompressed: the L2 entry
}

func (img *Image) getL2(off uint64) (*l2Table, error) {
	if t := img.cache.get(off); t != nil {
		return t, nil
	}
	if off%uint64(img.cs) != 0 {
		return nil, corruptf("L2 table offset %#x is not cluster aligned", off)
	}
	if off >= uint64(img.fileSize) {
		return nil, corruptf("L2 table at %#x is beyond end of file (%d bytes)", off, img.fileSize)
	}
	bp := img.bufPool.Get().(*[]byte)
	defer img.bufPool.Put(bp)
	buf := *bp
	if err := readFullAt(img.f, buf, int64(off)); err != nil {
		return nil, fmt.Errorf("read L2 table at %#x: %w", off, err)
	}
	t := &l2Table{off: off, entries: make([]uint64, img.l2n)}
	for i := range t.entries {
		t.entries[i] = binary.BigEndian.Uint64(buf[i*8:])
	}
	img.cache.put(t)
	return t, nil
}

func (img *Image) entryKind(e uint64) int {
	switch {
	case e&oflagCompressed != 0:
		return runCompressed
	case e&oflagZero != 0 && img.h.version >= 3:
		return runZero
	case e&offsetMask == 0:
		return runUnalloc
	default:
		return runData
	}
}

// mapRun describes the longest run starting at guest offset off (at most
// maxLen bytes, not crossing an L2 table's coverage) whose clusters share
// one kind and, for data, are contiguous on the host. Caller holds mu.
func (img *Image) mapRun(off, maxLen int64) (run, error) {
	ci := off >> img.bits
	l1i := ci / img.l2n
	if l1i >= int64(len(img.l1)) {
		return run{}, corruptf("guest offset %d beyond L1 table (%d entries)", off, len(img.l1))
	}
	inCl := off & (img.cs - 1)
	regionEnd := (l1i + 1) * img.l2n * img.cs
	limit := min(off+maxLen, regionEnd)
	l2off := img.l1[l1i] & offsetMask
	if l2off == 0 {
		return run{kind: runUnalloc, length: limit - off}, nil
	}
	t, err := img.getL2(l2off)
	if err != nil {
		return run{}, fmt.Errorf("L1 entry %d: %w", l1i, err)
	}
	j := ci % img.l2n
	e := t.entries[j]
	r := run{kind: img.entryKind(e), length: min(img.cs-inCl, limit-off)}
	switch r.kind {
	case runCompressed:
		r.entry = e
		return r, nil
	case runData:
		host := e & offsetMask
		if host%uint64(img.cs) != 0 {
			return run{}, corruptf("L2 table %#x entry %d: data offset %#x is not cluster aligned", l2off, j, host)
		}
		r.host = int64(host) + inCl
	}
	next := host0(e) + uint64(img.cs)
	for pos := off + r.length; pos < limit; pos += img.cs {
		j++
		e2 := t.entries[j]
		k := img.entryKind(e2)
		if k != r.kind || (k == runData && e2&offsetMask != next) {
			break
		}
		next += uint64(img.cs)
		r.length += min(img.cs, limit-pos)
	}
	return r, nil
}

func host0(e uint64) uint64 { return e & offsetMask }

// ReadAt implements io.ReaderAt over the guest-visible contents of the
// image (including its backing chain).
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	if img.closed {
		return 0, os.ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("read at %d: %w", off, ErrOutOfRange)
	}
	if off >= img.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), img.size-off))
	if err := img.readAt(p[:n], off); err != nil {
		return 0, fmt.Errorf("read %s at %d: %w", img.path, off, err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (img *Image) readAt(p []byte, off int64) error {
	for len(p) > 0 {
		r, err := img.mapRun(off, int64(len(p)))
		if err != nil {
			return err
		}
		chunk := p[:r.length]
		switch r.kind {
		case runUnalloc:
			if err := img.readBacking(chunk, off); err != nil {
				return err
			}
		case runZero:
			clear(chunk)
		case runData:
			if err := readFullAt(img.f, chunk, r.host); err != nil {
				return err
			}
		case runCompressed:
			bp := img.bufPool.Get().(*[]byte)
			err := img.decompress(r.entry, *bp)
			if err == nil {
				copy(chunk, (*bp)[off&(img.cs-1):])
			}
			img.bufPool.Put(bp)
			if err != nil {
				return err
			}
		}
		p = p[r.length:]
		off += r.length
	}
	return nil
}

// readBacking fills p with backing data for guest offset off; what lies
// beyond the backing file's size (or everything, without one) is zero.
func (img *Image) readBacking(p []byte, off int64) error {
	if img.backing == nil {
		clear(p)
		return nil
	}
	bs := img.backing.Size()
	n := int64(0)
	if off < bs {
		n = min(int64(len(p)), bs-off)
		got, err := img.backing.ReadAt(p[:n], off)
		if err != nil && !(errors.Is(err, io.EOF) && int64(got) == n) {
			return fmt.Errorf("read backing file %s: %w", img.backingPath, err)
		}
	}
	clear(p[n:])
	return nil
}

// decompress inflates the compressed cluster described by L2 entry e into
// out (one cluster). QEMU writes zlib-type clusters as raw deflate streams.
func (img *Image) decompress(e uint64, out []byte) error {
	coff := int64(e & img.coffMask)
	nsec := int64((e>>img.csizeShift)&img.csizeMask) + 1
	csize := nsec*512 - coff&511
	if coff >= img.fileSize || coff < img.cs {
		return corruptf("compressed cluster at %#x is outside the file (%d bytes)", coff, img.fileSize)
	}
	csize = min(csize, img.fileSize-coff)
	in := make([]byte, csize)
	if err := readFullAt(img.f, in, coff); err != nil {
		return err
	}
	br := bytes.NewReader(in)
	var fr io.ReadCloser
	if v := img.flatePool.Get(); v != nil {
		fr = v.(io.ReadCloser)
		if err := fr.(flate.Resetter).Reset(br, nil); err != nil {
			return err
		}
	} else {
		fr = flate.NewReader(br)
	}
	defer img.flatePool.Put(fr)
	if _, err := io.ReadFull(fr, out); err != nil {
		return corruptf("compressed cluster at %#x (%d bytes): inflate: %v", coff, csize, err)
	}
	return nil
}

// Flush writes all changes to stable storage (fsync).
func (img *Image) Flush() error {
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.closed {
		return os.ErrClosed
	}
	return img.flushLocked()
}

func (img *Image) flushLocked() error {
	if !img.writable || img.noSync {
		return img.failed
	}
	if err := img.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", img.path, err)
	}
	return img.failed
}

// Close flushes a writable image to stable storage and closes it and its
// backing chain. Close is idempotent.
func (img *Image) Close() error {
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.closed {
		return nil
	}
	img.closed = true
	err := img.flushLocked()
	if cerr := img.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", img.path, cerr)
	}
	if img.backing != nil {
		if cerr := img.backing.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

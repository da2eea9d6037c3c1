package qcow2

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"os"
)

// DefaultClusterSize is the cluster size of new images unless configured.
const DefaultClusterSize = 64 << 10

// CreateOptions configure Create.
type CreateOptions struct {
	// Size is the virtual size in bytes, rounded up to a multiple of 512.
	// With a backing file, 0 means "the backing file's virtual size".
	Size int64
	// ClusterSize is a power of two from 512 B to 2 MiB
	// (default 64 KiB).
	ClusterSize int
	// RefcountBits is the refcount width: 1, 2, 4, 8, 16, 32 or 64
	// (default 16).
	RefcountBits int
	// BackingFile makes the new image a copy-on-write overlay. It is
	// recorded as given; a relative name is resolved against the new
	// image's directory (QEMU semantics).
	BackingFile string
	// BackingFormat is "qcow2" or "raw"; empty probes the backing file
	// and records the result.
	BackingFormat string
}

// Create creates a new qcow2 version 3 image at path, which must not
// exist, and returns it open for writing (with its backing chain open).
// Close (or Flush) makes it durable.
func Create(path string, opts CreateOptions) (*Image, error) {
	img, err := create(path, opts)
	if err != nil {
		return nil, fmt.Errorf("create qcow2 %s: %w", path, err)
	}
	return img, nil
}

func create(path string, opts CreateOptions) (*Image, error) {
	cs := int64(opts.ClusterSize)
	if cs == 0 {
		cs = DefaultClusterSize
	}
	if cs < 1<<minClusterBits || cs > 1<<maxClusterBits || cs&(cs-1) != 0 {
		return nil, fmt.Errorf("%w: cluster size %d (want a power of two from 512 to 2 MiB)", ErrUnsupported, cs)
	}
	rb := opts.RefcountBits
	if rb == 0 {
		rb = 16
	}
	if rb < 1 || rb > 64 || rb&(rb-1) != 0 {
		return nil, fmt.Errorf("%w: refcount bits %d (want a power of two from 1 to 64)", ErrUnsupported, rb)
	}
	size := opts.Size
	format := opts.BackingFormat
	if opts.BackingFile != "" {
		if err := checkBackingName(opts.BackingFile); err != nil {
			return nil, err
		}
		if format != "" && format != FormatQcow2 && format != FormatRaw {
			return nil, fmt.Errorf("%w: backing format %q (want raw or qcow2)", ErrUnsupported, format)
		}
		// Only the backing file's own header is read, so creating an
		// overlay costs the same whatever the chain below holds.
		bpath := ResolveBacking(path, opts.BackingFile)
		bsize, bformat, err := probeSize(bpath, format)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %w", ErrBackingFile, bpath, err)
		}
		format = bformat
		if size == 0 {
			size = bsize
		}
	}
	if size < 0 || size > maxVirtualSize {
		return nil, tooLargef("virtual size %d", size)
	}
	size = roundUpI(size, 512)
	clusterBits := uint32(bits.TrailingZeros64(uint64(cs)))
	l1Size := l1Needed(uint64(size), clusterBits)
	if l1Size*8 > maxL1Bytes {
		return nil, tooLargef("virtual size %d needs an L1 table of %d entries with %d-byte clusters; use larger clusters", size, l1Size, cs)
	}

	h := &header{
		version:               3,
		clusterBits:           clusterBits,
		size:                  uint64(size),
		refcountTableOffset:   uint64(cs),
		refcountTableClusters: 1,
		refcountOrder:         uint32(bits.TrailingZeros(uint(rb))),
		headerLength:          ourHeaderLength,
		extraFields:           make([]byte, ourHeaderLength-v3HeaderLength),
		backingFile:           opts.BackingFile,
		backingFormat:         format,
	}
	hdr, err := h.encode(cs)
	if err != nil {
		return nil, err
	}

	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(path)
		}
	}()

	// Layout as QEMU makes it: header, refcount table, refcount block,
	// then the L1 table (allocated through the normal allocator, which
	// adds refcount blocks if a small cluster size needs them).
	rc := newRefcounts(f, uint64(cs), h.refcountOrder, func() uint64 { return 3 * uint64(cs) })
	rc.table = make([]uint64, cs/8)
	rc.table[0] = 2 * uint64(cs)
	rc.tableOff, rc.tableClusters = uint64(cs), 1
	rc.blocks[0] = make([]byte, cs)
	rc.newBlocks[0] = true
	rc.markTableDirty(0)
	for c := uint64(0); c < 3; c++ {
		if err := rc.set(c, 1); err != nil {
			return nil, err
		}
	}
	rc.end = 3
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return nil, err
	}
	if err := rc.flushBlocks(); err != nil {
		return nil, err
	}
	if _, err := f.WriteAt(rc.encodeTable(0, uint64(len(rc.table))), cs); err != nil {
		return nil, err
	}
	rc.tableDirtyLo, rc.tableDirtyHi = 0, 0
	rc.onTableMove = func(off, clusters uint64) error {
		var b [12]byte
		binary.BigEndian.PutUint64(b[0:], off)
		binary.BigEndian.PutUint32(b[8:], uint32(clusters))
		_, err := f.WriteAt(b[:], offRefTableOffset)
		return err
	}
	if l1Size > 0 {
		l1Clusters := (l1Size*8 + uint64(cs) - 1) / uint64(cs)
		first, err := rc.alloc(l1Clusters)
		if err != nil {
			return nil, err
		}
		var b [12]byte
		binary.BigEndian.PutUint32(b[0:], uint32(l1Size))
		binary.BigEndian.PutUint64(b[4:], first*uint64(cs))
		if _, err := f.WriteAt(b[:], offL1Size); err != nil {
			return nil, err
		}
	}
	// Zero-filled tail (the L1 table) without writing it.
	if err := f.Truncate(int64(rc.end) * cs); err != nil {
		return nil, err
	}
	ok = true
	if err := f.Close(); err != nil {
		os.Remove(path)
		return nil, err
	}
	img, err := Open(path, OpenOptions{Writable: true})
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	return img, nil
}

// probeSize returns the virtual size and format of a backing file from
// its header alone.
func probeSize(path, format string) (int64, string, error) {
	f, fi, err := openBackingFile(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	if format == "" {
		if format, err = probeFormat(f); err != nil {
			return 0, "", err
		}
	}
	if format == FormatRaw {
		size, err := fileSize(f, fi)
		return size, format, err
	}
	h, err := readHeader(f, fi.Size())
	if err != nil {
		return 0, "", err
	}
	return int64(h.size), format, nil
}

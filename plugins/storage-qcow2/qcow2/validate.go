package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// DefaultMaxVirtualSize is Validate's default cap on the virtual size.
const DefaultMaxVirtualSize = 16 << 40

// ValidateOptions configure Validate.
type ValidateOptions struct {
	// MaxVirtualSize caps the virtual size (default 16 TiB).
	MaxVirtualSize int64
}

// Validate checks that the file at path is a self-contained, consistent
// qcow2 image that is safe to import: no backing file or external data
// file, no unsupported features (encryption, internal snapshots, dirty
// bitmaps, extended L2, zstd), sizes within limits and bounded by the file
// size, every table and cluster inside the file and aligned, no two
// structures sharing a cluster, no data cluster referenced twice, and
// refcounts that match the references exactly (no leaks, no mismatches).
//
// It returns nil, an I/O error, or a *FormatError (wrapped with the path)
// naming the first problem found and where it is. Validate reads every
// metadata cluster once and never allocates more than a small fraction of
// the file's size, whatever the file contains.
func Validate(path string, opts ValidateOptions) error {
	// Non-blocking: path is untrusted, and opening a FIFO for reading
	// would wait for a writer.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("validate %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("validate %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("validate %s: %w", path, formatErr(ProblemHeader, -1, "not a regular file"))
	}
	if err := validate(f, fi.Size(), opts); err != nil {
		return fmt.Errorf("validate %s: %w", path, err)
	}
	return nil
}

// cluster owners, for overlap detection
const (
	ownFree uint8 = iota
	ownHeader
	ownL1
	ownRefTable
	ownRefBlock
	ownL2
	ownData
	ownCompressed
)

var ownerNames = [...]string{"free", "the header", "the L1 table", "the refcount table", "a refcount block", "an L2 table", "a data cluster", "compressed data"}

type validator struct {
	r      io.ReaderAt
	size   int64
	h      *header
	cs     int64
	nc     int64    // clusters in the file
	counts []uint16 // references found, saturating
	owners []uint8
}

func validate(r io.ReaderAt, size int64, opts ValidateOptions) error {
	maxV := opts.MaxVirtualSize
	if maxV <= 0 {
		maxV = DefaultMaxVirtualSize
	}
	h, err := readHeader(r, size)
	if err != nil {
		return err
	}
	switch {
	case h.backingFile != "":
		return formatErr(ProblemBackingFile, offBackingFileOffset, "image references backing file %q", h.backingFile)
	case h.hasExtension(extBackingFormat):
		return formatErr(ProblemBackingFile, -1, "image has a backing format extension")
	case int64(h.size) > maxV:
		return formatErr(ProblemTooLarge, offSize, "virtual size %d exceeds the limit %d", h.size, maxV)
	case h.nbSnapshots != 0:
		return formatErr(ProblemUnsupported, 60, "%d internal snapshots", h.nbSnapshots)
	case h.hasExtension(extBitmaps) || h.autoclear&1 != 0:
		return formatErr(ProblemUnsupported, offAutoclear, "persistent dirty bitmaps")
	case h.hasExtension(extCrypto):
		return formatErr(ProblemEncrypted, -1, "encryption header extension")
	case h.incompat&incompatDirty != 0:
		return formatErr(ProblemUnsupported, offIncompat, "dirty bit set (lazy refcounts); repair with qemu-img check -r all first")
	case h.incompat&incompatCorrupt != 0:
		return formatErr(ProblemHeader, offIncompat, "corrupt bit set")
	}
	cs := h.clusterSize()
	v := &validator{r: r, size: size, h: h, cs: cs, nc: (size + cs - 1) / cs}
	v.counts = make([]uint16, v.nc)
	v.owners = make([]uint8, v.nc)

	if err := v.claim(0, 1, ownHeader, 0); err != nil {
		return err
	}
	if h.l1Size > 0 {
		l1Clusters := (int64(h.l1Size)*8 + cs - 1) / cs
		if err := v.claim(int64(h.l1TableOffset), l1Clusters, ownL1, offL1Size+4); err != nil {
			return err
		}
	}
	if err := v.claim(int64(h.refcountTableOffset), int64(h.refcountTableClusters), ownRefTable, offRefTableOffset); err != nil {
		return err
	}
	if err := v.walkL1(); err != nil {
		return err
	}
	return v.checkRefcounts()
}

// claim records that clusters [off, off+n*cs) belong to a metadata
// structure; ref is the file offset of the field pointing at it.
func (v *validator) claim(off, n int64, owner uint8, ref int64) error {
	if off%v.cs != 0 {
		return formatErr(ProblemMisaligned, ref, "%s at %#x is not cluster aligned", ownerNames[owner], off)
	}
	first := off / v.cs
	if first+n > v.nc || off < 0 {
		return formatErr(ProblemOutsideFile, ref, "%s at %#x (%d clusters) lies beyond end of file (%d bytes)", ownerNames[owner], off, n, v.size)
	}
	for c := first; c < first+n; c++ {
		if prev := v.owners[c]; prev != ownFree {
			return formatErr(ProblemOverlap, ref, "%s at %#x overlaps %s in cluster %#x", ownerNames[owner], off, ownerNames[prev], c*v.cs)
		}
		v.owners[c] = owner
		v.counts[c] = 1
	}
	return nil
}

func (v *validator) ref(c int64, owner uint8, ref int64, what string) error {
	if c < 0 || c >= v.nc {
		return formatErr(ProblemOutsideFile, ref, "%s at cluster %#x lies beyond end of file (%d bytes)", what, c*v.cs, v.size)
	}
	prev := v.owners[c]
	switch {
	case prev == ownFree:
		v.owners[c] = owner
	case prev == ownCompressed && owner == ownCompressed:
		// Compressed clusters legitimately share host clusters.
	case prev == ownData && owner == ownData:
		return formatErr(ProblemDoubleReference, ref, "%s at %#x is referenced twice", what, c*v.cs)
	default:
		return formatErr(ProblemOverlap, ref, "%s at %#x overlaps %s", what, c*v.cs, ownerNames[prev])
	}
	if v.counts[c] < ^uint16(0) {
		v.counts[c]++
	}
	return nil
}

func (v *validator) walkL1() error {
	h := v.h
	if h.l1Size == 0 {
		return nil
	}
	l1 := make([]byte, int64(h.l1Size)*8) // inside the file: checked by readHeader
	if err := readFullAt(v.r, l1, int64(h.l1TableOffset)); err != nil {
		return fmt.Errorf("read L1 table: %w", err)
	}
	var l2 []byte
	for i := int64(0); i < int64(h.l1Size); i++ {
		at := int64(h.l1TableOffset) + i*8
		e := binary.BigEndian.Uint64(l1[i*8:])
		if e&l1ReservedMask != 0 {
			return formatErr(ProblemInvalidEntry, at, "L1 entry %d (%#x) has reserved bits set", i, e)
		}
		off := int64(e & offsetMask)
		if off == 0 {
			continue
		}
		if off%v.cs != 0 {
			return formatErr(ProblemMisaligned, at, "L1 entry %d: L2 table offset %#x is not cluster aligned", i, off)
		}
		if off >= v.size {
			return formatErr(ProblemOutsideFile, at, "L1 entry %d: L2 table at %#x lies beyond end of file (%d bytes)", i, off, v.size)
		}
		if err := v.claim(off, 1, ownL2, at); err != nil {
			return fmt.Errorf("L1 entry %d: %w", i, err)
		}
		if l2 == nil {
			l2 = make([]byte, v.cs) // the table lies in the file, so cs < file size
		}
		if err := readFullAt(v.r, l2, off); err != nil {
			return fmt.Errorf("read L2 table at %#x: %w", off, err)
		}
		if err := v.walkL2(i, off, l2); err != nil {
			return err
		}
	}
	return nil
}

func (v *validator) walkL2(l1i, l2off int64, l2 []byte) error {
	h := v.h
	shift := uint(62 - (h.clusterBits - 8))
	cmask := (uint64(1) << (h.clusterBits - 8)) - 1
	omask := (uint64(1) << shift) - 1
	for j := int64(0); j < v.cs/8; j++ {
		at := l2off + j*8
		e := binary.BigEndian.Uint64(l2[j*8:])
		if e == 0 {
			continue
		}
		where := fmt.Sprintf("L2 table %#x (L1 entry %d) entry %d", l2off, l1i, j)
		if e&oflagCompressed != 0 {
			if e&oflagCopied != 0 {
				return formatErr(ProblemInvalidEntry, at, "%s: compressed cluster with the copied flag set", where)
			}
			coff := int64(e & omask)
			csize := int64((e>>shift)&cmask+1)*512 - coff&511
			if coff >= v.size {
				return formatErr(ProblemOutsideFile, at, "%s: compressed data at %#x lies beyond end of file (%d bytes)", where, coff, v.size)
			}
			for c := coff / v.cs; c <= (coff+csize-1)/v.cs; c++ {
				if err := v.ref(c, ownCompressed, at, where+": compressed data"); err != nil {
					return err
				}
			}
			continue
		}
		if e&l2ReservedMask != 0 {
			return formatErr(ProblemInvalidEntry, at, "%s (%#x) has reserved bits set", where, e)
		}
		if e&oflagZero != 0 && h.version < 3 {
			return formatErr(ProblemInvalidEntry, at, "%s: zero flag in a version 2 image", where)
		}
		host := int64(e & offsetMask)
		if host == 0 {
			if e&oflagCopied != 0 {
				return formatErr(ProblemInvalidEntry, at, "%s: copied flag on an unallocated cluster", where)
			}
			continue
		}
		if host%v.cs != 0 {
			return formatErr(ProblemMisaligned, at, "%s: data cluster offset %#x is not cluster aligned", where, host)
		}
		if host >= v.size {
			return formatErr(ProblemOutsideFile, at, "%s: data cluster at %#x lies beyond end of file (%d bytes)", where, host, v.size)
		}
		if err := v.ref(host/v.cs, ownData, at, where+": data cluster"); err != nil {
			return err
		}
	}
	return nil
}

func (v *validator) checkRefcounts() error {
	h := v.h
	order := h.refcountOrder
	epb := v.cs * 8 >> order
	rtOff := int64(h.refcountTableOffset)
	// The table may end in the file's last, partial cluster: only the
	// part inside the file is read (the rest is zeros), so the allocation
	// is bounded by the file size.
	rtLen := min(int64(h.refcountTableClusters)*v.cs, v.size-rtOff)
	rt := make([]byte, rtLen/8*8)
	if err := readFullAt(v.r, rt, rtOff); err != nil {
		return fmt.Errorf("read refcount table: %w", err)
	}
	entries := int64(len(rt) / 8)
	// First claim every refcount block, so overlaps are found before
	// counts are compared.
	for i := int64(0); i < entries; i++ {
		at := rtOff + i*8
		e := binary.BigEndian.Uint64(rt[i*8:])
		if e == 0 {
			continue
		}
		if e&^refEntryMask != 0 {
			return formatErr(ProblemInvalidEntry, at, "refcount table entry %d (%#x) has reserved bits set", i, e)
		}
		off := int64(e)
		if off%v.cs != 0 {
			return formatErr(ProblemMisaligned, at, "refcount table entry %d: block offset %#x is not cluster aligned", i, off)
		}
		if off >= v.size || off < 0 {
			return formatErr(ProblemOutsideFile, at, "refcount table entry %d: block at %#x lies beyond end of file (%d bytes)", i, off, v.size)
		}
		if err := v.claim(off, 1, ownRefBlock, at); err != nil {
			return fmt.Errorf("refcount table entry %d: %w", i, err)
		}
	}
	var block []byte
	for i := int64(0); i < entries; i++ {
		first := i * epb
		e := binary.BigEndian.Uint64(rt[i*8:])
		if e == 0 {
			for c := first; c < min(first+epb, v.nc); c++ {
				if v.counts[c] != 0 {
					return formatErr(ProblemRefcountMismatch, rtOff+i*8, "cluster %#x is used by %s but has no refcount block (refcount table entry %d is 0)", c*v.cs, ownerNames[v.owners[c]], i)
				}
			}
			continue
		}
		if block == nil {
			block = make([]byte, v.cs) // a block lies in the file, so cs < file size
		}
		if err := readFullAt(v.r, block, int64(e)); err != nil {
			return fmt.Errorf("read refcount block at %#x: %w", e, err)
		}
		for k := int64(0); k < epb; k++ {
			c := first + k
			got := getRefcount(block, uint64(k), order)
			var want uint64
			if c < v.nc {
				want = uint64(v.counts[c])
			}
			if got == want || (want == uint64(^uint16(0)) && got >= want) {
				continue
			}
			at := int64(e) + (k<<order)/8
			switch {
			case c >= v.nc:
				return formatErr(ProblemLeak, at, "cluster %#x beyond end of file has refcount %d (refcount block %d entry %d)", c*v.cs, got, i, k)
			case want == 0:
				return formatErr(ProblemLeak, at, "cluster %#x has refcount %d but nothing references it (refcount block %d entry %d)", c*v.cs, got, i, k)
			default:
				return formatErr(ProblemRefcountMismatch, at, "cluster %#x used by %s has refcount %d, expected %d (refcount block %d entry %d)", c*v.cs, ownerNames[v.owners[c]], got, want, i, k)
			}
		}
	}
	if covered := entries * epb; covered < v.nc {
		for c := covered; c < v.nc; c++ {
			if v.counts[c] != 0 {
				return formatErr(ProblemRefcountMismatch, rtOff, "cluster %#x is used by %s but lies beyond the refcount table's coverage", c*v.cs, ownerNames[v.owners[c]])
			}
		}
	}
	return nil
}

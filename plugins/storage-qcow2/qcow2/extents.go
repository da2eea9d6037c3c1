package qcow2

import (
	"fmt"
	"os"
)

// ExtentKind says how a guest range of an image reads.
type ExtentKind uint8

const (
	// ExtentData: the range holds data (standard or compressed clusters,
	// or, for a raw file, a non-hole range).
	ExtentData ExtentKind = iota + 1
	// ExtentZero: the range reads as zeros (zero clusters, unallocated
	// clusters with nothing below them, ranges beyond a backing file's
	// end, holes in a raw file).
	ExtentZero
	// ExtentBacking: not allocated in this image; reads fall through to
	// the backing file. Only reported by Extents, never by ChainExtents.
	ExtentBacking
)

func (k ExtentKind) String() string {
	switch k {
	case ExtentData:
		return "data"
	case ExtentZero:
		return "zero"
	case ExtentBacking:
		return "backing"
	}
	return fmt.Sprintf("ExtentKind(%d)", k)
}

// Extent is a guest byte range with uniform allocation status.
type Extent struct {
	Offset int64
	Length int64
	Kind   ExtentKind
	// Depth is the position in the backing chain of the layer that
	// decides how the range reads: 0 is the image itself, 1 its backing
	// file, and so on.
	Depth int
}

type extentList struct{ out []Extent }

func (l *extentList) add(e Extent) error {
	if e.Length <= 0 {
		return nil
	}
	if n := len(l.out); n > 0 {
		last := &l.out[n-1]
		if last.Kind == e.Kind && last.Depth == e.Depth && last.Offset+last.Length == e.Offset {
			last.Length += e.Length
			return nil
		}
	}
	l.out = append(l.out, e)
	return nil
}

func (img *Image) clampRange(off, length int64) (int64, error) {
	if img.closed {
		return 0, os.ErrClosed
	}
	if off < 0 || length < 0 || off > img.size {
		return 0, fmt.Errorf("extents at %d+%d of %s (size %d): %w", off, length, img.path, img.size, ErrOutOfRange)
	}
	return min(length, img.size-off), nil
}

// Extents describes [off, off+length) of this image alone: which ranges
// are allocated here (data), read as zeros, or fall through to the
// backing file. Adjacent ranges of one kind are merged.
func (img *Image) Extents(off, length int64) ([]Extent, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	length, err := img.clampRange(off, length)
	if err != nil {
		return nil, err
	}
	var l extentList
	end := off + length
	for off < end {
		r, err := img.mapRun(off, end-off)
		if err != nil {
			return nil, fmt.Errorf("map %s at %d: %w", img.path, off, err)
		}
		l.add(Extent{Offset: off, Length: r.length, Kind: img.runExtentKind(r.kind)})
		off += r.length
	}
	return l.out, nil
}

func (img *Image) runExtentKind(kind int) ExtentKind {
	switch kind {
	case runData, runCompressed:
		return ExtentData
	case runZero:
		return ExtentZero
	}
	if img.h.backingFile != "" {
		return ExtentBacking
	}
	return ExtentZero
}

// ChainExtents describes [off, off+length) of the image as seen through
// its whole backing chain: every range is ExtentData or ExtentZero, with
// Depth saying which layer provides it. This is what a sparse flatten
// needs: only ExtentData ranges have to be copied.
func (img *Image) ChainExtents(off, length int64) ([]Extent, error) {
	var l extentList
	if err := img.chainExtents(off, length, 0, l.add); err != nil {
		return nil, err
	}
	return l.out, nil
}

func (img *Image) chainExtents(off, length int64, depth int, fn func(Extent) error) error {
	img.mu.RLock()
	defer img.mu.RUnlock()
	length, err := img.clampRange(off, length)
	if err != nil {
		return err
	}
	end := off + length
	for off < end {
		r, err := img.mapRun(off, end-off)
		if err != nil {
			return fmt.Errorf("map %s at %d: %w", img.path, off, err)
		}
		switch r.kind {
		case runData, runCompressed:
			err = fn(Extent{Offset: off, Length: r.length, Kind: ExtentData, Depth: depth})
		case runZero:
			err = fn(Extent{Offset: off, Length: r.length, Kind: ExtentZero, Depth: depth})
		default:
			err = img.backingExtents(off, r.length, depth, fn)
		}
		if err != nil {
			return err
		}
		off += r.length
	}
	return nil
}

func (img *Image) backingExtents(off, length int64, depth int, fn func(Extent) error) error {
	if img.backing == nil {
		return fn(Extent{Offset: off, Length: length, Kind: ExtentZero, Depth: depth})
	}
	bs := img.backing.Size()
	n := max(0, min(length, bs-off))
	if n > 0 {
		if err := img.backing.chainExtents(off, n, depth+1, fn); err != nil {
			return err
		}
	}
	if n < length {
		return fn(Extent{Offset: off + n, Length: length - n, Kind: ExtentZero, Depth: depth})
	}
	return nil
}

package qcow2

import (
	"encoding/binary"
	"fmt"
	"os"
)

// WriteAt implements io.WriterAt. Writes must lie within the virtual size.
// Partial writes to clusters not allocated in this image copy the rest of
// the cluster from the backing chain (copy-on-write). Refcounts are updated
// before the metadata that references new clusters is written, so an
// interrupted write can leak clusters but not corrupt the image; data
// reaches stable storage on Flush or Close.
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	if err := img.checkWritable(); err != nil {
		return 0, err
	}
	if off < 0 || off > img.size || int64(len(p)) > img.size-off {
		return 0, fmt.Errorf("write %d bytes at %d to %s (virtual size %d): %w", len(p), off, img.path, img.size, ErrOutOfRange)
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		regionEnd := (pos>>img.bits/img.l2n + 1) * img.l2n * img.cs
		n := int(min(int64(len(p)-done), regionEnd-pos))
		if err := img.writeRegion(p[done:done+n], pos); err != nil {
			img.failed = fmt.Errorf("write %s at %d: %w", img.path, pos, err)
			return done, img.failed
		}
		done += n
	}
	return done, nil
}

func (img *Image) checkWritable() error {
	switch {
	case img.closed:
		return os.ErrClosed
	case !img.writable:
		return fmt.Errorf("%s: %w", img.path, ErrReadOnly)
	case img.failed != nil:
		return fmt.Errorf("image unusable after an earlier failure: %w", img.failed)
	}
	return nil
}

// fill sources for newly allocated clusters that are only partly written.
const (
	fillBacking = iota
	fillZero
	fillHost       // copy an existing (shared) host cluster
	fillCompressed // inflate the old compressed cluster
)

type clusterPlan struct {
	j        int64  // index in the L2 table
	a, b     int64  // written byte range within the cluster
	pOff     int64  // offset in p of byte a
	host     uint64 // destination host offset
	alloc    bool   // needs a new cluster
	fill     int
	old      uint64 // old L2 entry
	fullZero bool   // in-place write over a zero-flagged cluster that is only partly written
}

// writeRegion writes p at guest offset off; the range lies within one L2
// table's coverage. Caller holds mu for writing.
func (img *Image) writeRegion(p []byte, off int64) error {
	l1i := off >> img.bits / img.l2n
	t, isNew, err := img.l2ForWrite(l1i)
	if err != nil {
		return err
	}

	// Classify each cluster touched.
	var plans []clusterPlan
	nAlloc := uint64(0)
	for pos := off; pos < off+int64(len(p)); {
		ci := pos >> img.bits
		a := pos & (img.cs - 1)
		b := min(img.cs, a+off+int64(len(p))-pos)
		cp := clusterPlan{j: ci % img.l2n, a: a, b: b, pOff: pos - off}
		e := t.entries[cp.j]
		cp.old = e
		full := a == 0 && b == img.cs
		switch img.entryKind(e) {
		case runUnalloc:
			cp.alloc, cp.fill = true, fillBacking
		case runCompressed:
			cp.alloc, cp.fill = true, fillCompressed
		case runZero, runData:
			host := e & offsetMask
			if host == 0 { // zero flag without preallocation
				cp.alloc, cp.fill = true, fillZero
				break
			}
			if host%uint64(img.cs) != 0 || host < uint64(img.cs) {
				return corruptf("L2 table %#x entry %d: bad data cluster offset %#x", t.off, cp.j, host)
			}
			shared := false
			if e&oflagCopied == 0 {
				rcnt, err := img.rc.get(host / uint64(img.cs))
				if err != nil {
					return err
				}
				if rcnt == 0 {
					return corruptf("data cluster %#x (L2 table %#x entry %d) has refcount 0", host, t.off, cp.j)
				}
				shared = rcnt > 1
			}
			isZero := img.entryKind(e) == runZero
			switch {
			case shared && isZero:
				cp.alloc, cp.fill = true, fillZero
			case shared:
				cp.alloc, cp.fill = true, fillHost
			default:
				cp.host = host
				cp.fullZero = isZero && !full
			}
		}
		if cp.alloc {
			nAlloc++
		}
		plans = append(plans, cp)
		pos += b - a
	}

	if nAlloc > 0 {
		first, err := img.rc.alloc(nAlloc)
		if err != nil {
			return err
		}
		next := first * uint64(img.cs)
		for i := range plans {
			if plans[i].alloc {
				plans[i].host = next
				next += uint64(img.cs)
			}
		}
		img.fileSize = max(img.fileSize, int64(img.rc.end)*img.cs)
	}

	// Write the data, coalescing host-contiguous runs that come straight
	// from p.
	var pending struct {
		host int64
		buf  []byte
		pLo  int64 // offset of buf in p, or -1 for a private buffer
	}
	pending.pLo = -1
	flush := func() error {
		if len(pending.buf) == 0 {
			return nil
		}
		if _, err := img.f.WriteAt(pending.buf, pending.host); err != nil {
			return err
		}
		pending.buf = nil
		return nil
	}
	emit := func(host int64, buf []byte, pLo int64) error {
		if len(pending.buf) > 0 && pLo >= 0 && pending.pLo >= 0 &&
			pending.host+int64(len(pending.buf)) == host && pending.pLo+int64(len(pending.buf)) == pLo {
			pending.buf = p[pending.pLo : pLo+int64(len(buf))]
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		pending.host, pending.buf, pending.pLo = host, buf, pLo
		if pLo < 0 {
			return flush() // private buffers are reused; write now
		}
		return nil
	}
	var cbuf []byte
	for i := range plans {
		cp := &plans[i]
		data := p[cp.pOff : cp.pOff+cp.b-cp.a]
		needFill := (cp.alloc && (cp.a != 0 || cp.b != img.cs)) || cp.fullZero
		if !needFill {
			if err := emit(int64(cp.host)+cp.a, data, cp.pOff); err != nil {
				return err
			}
			continue
		}
		if cbuf == nil {
			bp := img.bufPool.Get().(*[]byte)
			defer img.bufPool.Put(bp)
			cbuf = *bp
		}
		guest := (off + cp.pOff - cp.a)
		switch {
		case cp.fullZero:
			clear(cbuf)
		case cp.fill == fillBacking:
			if err := img.readBacking(cbuf, guest); err != nil {
				return err
			}
		case cp.fill == fillZero:
			clear(cbuf)
		case cp.fill == fillHost:
			if err := readFullAt(img.f, cbuf, int64(cp.old&offsetMask)); err != nil {
				return err
			}
		case cp.fill == fillCompressed:
			if err := img.decompress(cp.old, cbuf); err != nil {
				return err
			}
		}
		copy(cbuf[cp.a:], data)
		if err := emit(int64(cp.host), cbuf, -1); err != nil {
			return err
		}
	}
	if err := flush(); err != nil {
		return err
	}

	// Point the L2 table at the new clusters.
	lo, hi := int64(-1), int64(-1)
	for _, cp := range plans {
		ne := cp.host | oflagCopied
		if ne == t.entries[cp.j] {
			continue
		}
		t.entries[cp.j] = ne
		if lo < 0 {
			lo = cp.j
		}
		hi = cp.j + 1
	}
	if isNew {
		lo, hi = 0, img.l2n
	}
	if lo >= 0 {
		buf := make([]byte, (hi-lo)*8)
		for j := lo; j < hi; j++ {
			binary.BigEndian.PutUint64(buf[(j-lo)*8:], t.entries[j])
		}
		if _, err := img.f.WriteAt(buf, int64(t.off)+lo*8); err != nil {
			return fmt.Errorf("write L2 table at %#x: %w", t.off, err)
		}
	}
	if isNew {
		if err := img.setL1(l1i, t.off|oflagCopied); err != nil {
			return err
		}
	}

	// Drop references to clusters that were replaced.
	for _, cp := range plans {
		if !cp.alloc {
			continue
		}
		switch cp.fill {
		case fillCompressed:
			if err := img.decrefCompressed(cp.old); err != nil {
				return err
			}
		case fillHost, fillZero:
			if host := cp.old & offsetMask; host != 0 && cp.old&oflagCompressed == 0 {
				if err := img.rc.decref(host / uint64(img.cs)); err != nil {
					return err
				}
			}
		}
	}
	return img.rc.flushBlocks()
}

// l2ForWrite returns the L2 table for L1 index l1i, allocating a new one
// (not yet written) if there is none.
func (img *Image) l2ForWrite(l1i int64) (*l2Table, bool, error) {
	if l1i >= int64(len(img.l1)) {
		return nil, false, corruptf("L1 index %d beyond L1 table (%d entries)", l1i, len(img.l1))
	}
	e := img.l1[l1i]
	l2off := e & offsetMask
	if l2off == 0 {
		c, err := img.rc.alloc(1)
		if err != nil {
			return nil, false, err
		}
		img.fileSize = max(img.fileSize, int64(img.rc.end)*img.cs)
		t := &l2Table{off: c * uint64(img.cs), entries: make([]uint64, img.l2n)}
		img.cache.put(t)
		return t, true, nil
	}
	if l2off < uint64(img.cs) {
		return nil, false, corruptf("L1 entry %d points into the header (%#x)", l1i, l2off)
	}
	if e&oflagCopied == 0 {
		rcnt, err := img.rc.get(l2off / uint64(img.cs))
		if err != nil {
			return nil, false, err
		}
		if rcnt != 1 {
			return nil, false, unsupportedf("L2 table %#x (L1 entry %d) has refcount %d (shared with an internal snapshot)", l2off, l1i, rcnt)
		}
		if err := img.setL1(l1i, e|oflagCopied); err != nil {
			return nil, false, err
		}
	}
	t, err := img.getL2(l2off)
	if err != nil {
		return nil, false, err
	}
	return t, false, nil
}

func (img *Image) setL1(i int64, v uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	if _, err := img.f.WriteAt(b[:], int64(img.h.l1TableOffset)+i*8); err != nil {
		return fmt.Errorf("write L1 entry %d: %w", i, err)
	}
	img.l1[i] = v
	return nil
}

// decrefCompressed drops the references a compressed cluster holds on the
// host clusters its data spans (QEMU counts one per spanned cluster).
func (img *Image) decrefCompressed(e uint64) error {
	coff := e & img.coffMask
	nsec := ((e >> img.csizeShift) & img.csizeMask) + 1
	csize := nsec*512 - coff&511
	for c := coff / uint64(img.cs); c <= (coff+csize-1)/uint64(img.cs); c++ {
		if err := img.rc.decref(c); err != nil {
			return err
		}
	}
	return nil
}

// Resize grows the virtual size to newSize, rounded up to a multiple of
// 512 bytes. Shrinking is refused with ErrUnsupported. The new range reads
// as zeros (or as the backing file, where it is larger).
func (img *Image) Resize(newSize int64) error {
	img.mu.Lock()
	defer img.mu.Unlock()
	if err := img.checkWritable(); err != nil {
		return err
	}
	if newSize < 0 || newSize > maxVirtualSize {
		return fmt.Errorf("resize %s to %d: %w", img.path, newSize, ErrTooLarge)
	}
	newSize = roundUpI(newSize, 512)
	if newSize < img.size {
		return fmt.Errorf("resize %s from %d to %d: shrinking: %w", img.path, img.size, newSize, ErrUnsupported)
	}
	if newSize == img.size {
		return nil
	}
	if err := img.resize(newSize); err != nil {
		img.failed = fmt.Errorf("resize %s: %w", img.path, err)
		return img.failed
	}
	return nil
}

func (img *Image) resize(newSize int64) error {
	need := int64(l1Needed(uint64(newSize), uint32(img.bits)))
	if need*8 > maxL1Bytes {
		return tooLargef("virtual size %d needs an L1 table of %d entries", newSize, need)
	}
	l1Off := int64(img.h.l1TableOffset)
	l1Size := int64(len(img.l1))
	var oldClusters []uint64
	if need > l1Size {
		if need*8 <= img.l1Clusters*img.cs {
			// Room in the current clusters: make sure the new entries are 0.
			if _, err := img.f.WriteAt(make([]byte, (need-l1Size)*8), l1Off+l1Size*8); err != nil {
				return err
			}
		} else {
			clusters := (need*8 + img.cs - 1) / img.cs
			first, err := img.rc.alloc(uint64(clusters))
			if err != nil {
				return err
			}
			img.fileSize = max(img.fileSize, int64(img.rc.end)*img.cs)
			buf := make([]byte, clusters*img.cs)
			for i, e := range img.l1 {
				binary.BigEndian.PutUint64(buf[i*8:], e)
			}
			newOff := int64(first) * img.cs
			if _, err := img.f.WriteAt(buf, newOff); err != nil {
				return fmt.Errorf("write L1 table at %#x: %w", newOff, err)
			}
			if img.l1Clusters > 0 {
				for c := l1Off / img.cs; c < l1Off/img.cs+img.l1Clusters; c++ {
					oldClusters = append(oldClusters, uint64(c))
				}
			}
			l1Off = newOff
			img.l1Clusters = clusters
		}
		img.l1 = append(img.l1, make([]uint64, need-l1Size)...)
		l1Size = need
	}
	// size, crypt_method, l1_size and l1_table_offset are contiguous.
	var b [24]byte
	binary.BigEndian.PutUint64(b[0:], uint64(newSize))
	binary.BigEndian.PutUint32(b[8:], img.h.cryptMethod)
	binary.BigEndian.PutUint32(b[12:], uint32(l1Size))
	binary.BigEndian.PutUint64(b[16:], uint64(l1Off))
	if _, err := img.f.WriteAt(b[:], offSize); err != nil {
		return fmt.Errorf("update header: %w", err)
	}
	img.h.size, img.h.l1Size, img.h.l1TableOffset = uint64(newSize), uint32(l1Size), uint64(l1Off)
	img.size = newSize
	for _, c := range oldClusters {
		if err := img.rc.decref(c); err != nil {
			return err
		}
	}
	return img.rc.flushBlocks()
}

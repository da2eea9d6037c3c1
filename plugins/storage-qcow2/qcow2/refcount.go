package qcow2

import (
	"encoding/binary"
	"fmt"
)

// refEntryMask clears the reserved low bits (0-8) of a refcount table entry.
const refEntryMask = ^uint64(0x1ff)

// getRefcount reads entry idx of a refcount block with the given order.
func getRefcount(block []byte, idx uint64, order uint32) uint64 {
	switch order {
	case 3:
		return uint64(block[idx])
	case 4:
		return uint64(binary.BigEndian.Uint16(block[idx*2:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(block[idx*4:]))
	case 6:
		return binary.BigEndian.Uint64(block[idx*8:])
	default: // sub-byte widths; bit 0 is the least significant bit
		width := uint64(1) << order
		bit := idx * width
		return uint64(block[bit/8]>>(bit%8)) & (1<<width - 1)
	}
}

// setRefcount writes entry idx and returns the byte range touched.
func setRefcount(block []byte, idx uint64, order uint32, v uint64) (lo, hi int) {
	switch order {
	case 3:
		block[idx] = byte(v)
		return int(idx), int(idx) + 1
	case 4:
		binary.BigEndian.PutUint16(block[idx*2:], uint16(v))
		return int(idx * 2), int(idx*2) + 2
	case 5:
		binary.BigEndian.PutUint32(block[idx*4:], uint32(v))
		return int(idx * 4), int(idx*4) + 4
	case 6:
		binary.BigEndian.PutUint64(block[idx*8:], v)
		return int(idx * 8), int(idx*8) + 8
	default:
		width := uint64(1) << order
		bit := idx * width
		mask := byte(1<<width-1) << (bit % 8)
		block[bit/8] = block[bit/8]&^mask | byte(v<<(bit%8))&mask
		return int(bit / 8), int(bit/8) + 1
	}
}

// refcounts is the in-memory view of an image's refcount structures, used
// by writable images. Changes are written through by flush, which callers
// invoke before writing anything that references newly counted clusters,
// so that a crash can leak clusters but never leave a reference to a
// cluster whose refcount is 0.
type refcounts struct {
	f        fileIO
	cs       uint64
	order    uint32
	epb      uint64 // entries per refcount block
	maxCount uint64

	table         []uint64 // whole refcount table (all its clusters)
	tableOff      uint64
	tableClusters uint64
	blocks        map[uint64][]byte // loaded blocks, by table index
	newBlocks     map[uint64]bool   // blocks not yet written at all
	dirty         map[uint64][2]int // byte range to write, by table index
	tableDirtyLo  uint64
	tableDirtyHi  uint64 // exclusive; lo==hi means clean

	// end is the index of the first cluster past everything allocated or
	// present in the file; allocation always happens there.
	end uint64
	// fileSize bounds reads of on-disk refcount blocks.
	fileSize func() uint64

	// onTableMove is called after a grown refcount table has been written,
	// to point the header at it.
	onTableMove func(off, clusters uint64) error
}

func newRefcounts(f fileIO, cs uint64, order uint32, fileSize func() uint64) *refcounts {
	width := uint64(1) << order
	max := uint64(1)<<width - 1
	if width == 64 {
		max = ^uint64(0)
	}
	return &refcounts{
		f:         f,
		cs:        cs,
		order:     order,
		epb:       cs * 8 / width,
		maxCount:  max,
		blocks:    map[uint64][]byte{},
		newBlocks: map[uint64]bool{},
		dirty:     map[uint64][2]int{},
		fileSize:  fileSize,
	}
}

// loadTable reads the refcount table described by the header.
func (rc *refcounts) loadTable(off, clusters uint64) error {
	// Only the part inside the file is read; the rest is zeros.
	inFile := min(clusters*rc.cs, rc.fileSize()-min(off, rc.fileSize()))
	buf := make([]byte, inFile/8*8)
	if err := readFullAt(rc.f, buf, int64(off)); err != nil {
		return fmt.Errorf("read refcount table at %#x: %w", off, err)
	}
	rc.table = make([]uint64, clusters*rc.cs/8)
	for i := range len(buf) / 8 {
		e := binary.BigEndian.Uint64(buf[i*8:])
		if e&^refEntryMask != 0 || (e != 0 && e%rc.cs != 0) {
			return corruptf("refcount table entry %d at %#x: %#x is not cluster aligned", i, off+uint64(i)*8, e)
		}
		rc.table[i] = e
	}
	rc.tableOff, rc.tableClusters = off, clusters
	return nil
}

// block returns the refcount block for table index bi, loading it if
// needed; nil if the block is not allocated.
func (rc *refcounts) block(bi uint64) ([]byte, error) {
	if bi >= uint64(len(rc.table)) {
		return nil, nil
	}
	if b, ok := rc.blocks[bi]; ok {
		return b, nil
	}
	off := rc.table[bi]
	if off == 0 {
		return nil, nil
	}
	if off >= rc.fileSize() {
		return nil, corruptf("refcount block %d at %#x is beyond end of file", bi, off)
	}
	b := make([]byte, rc.cs)
	if err := readFullAt(rc.f, b, int64(off)); err != nil {
		return nil, fmt.Errorf("read refcount block %d at %#x: %w", bi, off, err)
	}
	rc.blocks[bi] = b
	return b, nil
}

func (rc *refcounts) get(cluster uint64) (uint64, error) {
	b, err := rc.block(cluster / rc.epb)
	if err != nil || b == nil {
		return 0, err
	}
	return getRefcount(b, cluster%rc.epb, rc.order), nil
}

// set changes a refcount; the block must exist.
func (rc *refcounts) set(cluster, v uint64) error {
	bi := cluster / rc.epb
	b, err := rc.block(bi)
	if err != nil {
		return err
	}
	if b == nil {
		return fmt.Errorf("internal error: no refcount block for cluster %d", cluster)
	}
	if v > rc.maxCount {
		return fmt.Errorf("%w: refcount of cluster %d would exceed %d", ErrUnsupported, cluster, rc.maxCount)
	}
	lo, hi := setRefcount(b, cluster%rc.epb, rc.order, v)
	if d, ok := rc.dirty[bi]; ok {
		lo, hi = min(lo, d[0]), max(hi, d[1])
	}
	rc.dirty[bi] = [2]int{lo, hi}
	return nil
}

func (rc *refcounts) markTableDirty(bi uint64) {
	if rc.tableDirtyLo == rc.tableDirtyHi {
		rc.tableDirtyLo, rc.tableDirtyHi = bi, bi+1
		return
	}
	rc.tableDirtyLo = min(rc.tableDirtyLo, bi)
	rc.tableDirtyHi = max(rc.tableDirtyHi, bi+1)
}

// computeEnd finds the first cluster after the last one with a nonzero
// refcount, or after the end of the file, whichever is later.
func (rc *refcounts) computeEnd() error {
	end := (rc.fileSize() + rc.cs - 1) / rc.cs
	for bi := len(rc.table) - 1; bi >= 0; bi-- {
		if rc.table[bi] == 0 {
			continue
		}
		b, err := rc.block(uint64(bi))
		if err != nil {
			return err
		}
		last := int64(-1)
		for i := int64(rc.epb) - 1; i >= 0; i-- {
			if getRefcount(b, uint64(i), rc.order) != 0 {
				last = i
				break
			}
		}
		if last >= 0 {
			end = max(end, uint64(bi)*rc.epb+uint64(last)+1)
			break
		}
	}
	rc.end = end
	return nil
}

// alloc reserves n contiguous clusters at the end of the image, sets their
// refcounts to 1 (creating refcount blocks and growing the refcount table
// as needed) and writes the refcount changes. It returns the index of the
// first cluster.
func (rc *refcounts) alloc(n uint64) (uint64, error) {
	if n == 0 {
		return rc.end, nil
	}
	first := rc.end
	rc.end += n
	var newTableOff, newTableClusters uint64
	var meta []uint64 // clusters used by new refcount blocks
	for {
		changed := false
		lastBlock := (rc.end - 1) / rc.epb
		if lastBlock >= uint64(len(rc.table)) {
			need := lastBlock + 1
			entries := roundUp((need+need/2+8)*8, rc.cs) / 8
			clusters := entries * 8 / rc.cs
			if clusters*rc.cs > maxRefTableBytes {
				return 0, tooLargef("refcount table would need %d clusters", clusters)
			}
			// A table reserved by an earlier pass of this loop that turned
			// out too small is simply left unreferenced with refcount 0.
			newTableOff, newTableClusters = rc.end*rc.cs, clusters
			rc.end += clusters
			rc.table = append(rc.table, make([]uint64, entries-uint64(len(rc.table)))...)
			continue
		}
		for bi := first / rc.epb; bi <= lastBlock; bi++ {
			if rc.table[bi] != 0 {
				continue
			}
			c := rc.end
			rc.end++
			rc.table[bi] = c * rc.cs
			rc.blocks[bi] = make([]byte, rc.cs)
			rc.newBlocks[bi] = true
			rc.markTableDirty(bi)
			meta = append(meta, c)
			changed = true
		}
		if !changed {
			break
		}
	}
	for c := first; c < first+n; c++ {
		if err := rc.set(c, 1); err != nil {
			return 0, err
		}
	}
	for _, c := range meta {
		if err := rc.set(c, 1); err != nil {
			return 0, err
		}
	}
	if newTableClusters != 0 {
		for c := newTableOff / rc.cs; c < newTableOff/rc.cs+newTableClusters; c++ {
			if err := rc.set(c, 1); err != nil {
				return 0, err
			}
		}
	}
	if err := rc.flushBlocks(); err != nil {
		return 0, err
	}
	if newTableClusters != 0 {
		if err := rc.moveTable(newTableOff, newTableClusters); err != nil {
			return 0, err
		}
	} else if err := rc.flushTable(); err != nil {
		return 0, err
	}
	return first, nil
}

// decref drops one reference to a cluster. Freed clusters are not reused
// (allocation is append-only); they simply stop being counted.
func (rc *refcounts) decref(cluster uint64) error {
	v, err := rc.get(cluster)
	if err != nil {
		return err
	}
	if v == 0 {
		return corruptf("refcount of cluster %d (offset %#x) is already 0", cluster, cluster*rc.cs)
	}
	return rc.set(cluster, v-1)
}

func (rc *refcounts) flushBlocks() error {
	for bi, rng := range rc.dirty {
		b := rc.blocks[bi]
		off := rc.table[bi]
		if rc.newBlocks[bi] {
			rng = [2]int{0, len(b)}
		}
		if _, err := rc.f.WriteAt(b[rng[0]:rng[1]], int64(off)+int64(rng[0])); err != nil {
			return fmt.Errorf("write refcount block %d at %#x: %w", bi, off, err)
		}
		delete(rc.dirty, bi)
		delete(rc.newBlocks, bi)
	}
	for bi := range rc.newBlocks { // new but never dirtied: still write zeros
		if _, err := rc.f.WriteAt(rc.blocks[bi], int64(rc.table[bi])); err != nil {
			return fmt.Errorf("write refcount block %d: %w", bi, err)
		}
		delete(rc.newBlocks, bi)
	}
	return nil
}

func (rc *refcounts) encodeTable(lo, hi uint64) []byte {
	buf := make([]byte, (hi-lo)*8)
	for i := lo; i < hi; i++ {
		binary.BigEndian.PutUint64(buf[(i-lo)*8:], rc.table[i])
	}
	return buf
}

func (rc *refcounts) flushTable() error {
	if rc.tableDirtyLo == rc.tableDirtyHi {
		return nil
	}
	lo, hi := rc.tableDirtyLo, rc.tableDirtyHi
	if _, err := rc.f.WriteAt(rc.encodeTable(lo, hi), int64(rc.tableOff+lo*8)); err != nil {
		return fmt.Errorf("write refcount table at %#x: %w", rc.tableOff, err)
	}
	rc.tableDirtyLo, rc.tableDirtyHi = 0, 0
	return nil
}

// moveTable writes the whole (grown) table at its new place, switches the
// header to it and frees the old table's clusters.
func (rc *refcounts) moveTable(off, clusters uint64) error {
	if _, err := rc.f.WriteAt(rc.encodeTable(0, uint64(len(rc.table))), int64(off)); err != nil {
		return fmt.Errorf("write refcount table at %#x: %w", off, err)
	}
	if err := rc.onTableMove(off, clusters); err != nil {
		return err
	}
	oldOff, oldClusters := rc.tableOff, rc.tableClusters
	rc.tableOff, rc.tableClusters = off, clusters
	rc.tableDirtyLo, rc.tableDirtyHi = 0, 0
	for c := oldOff / rc.cs; c < oldOff/rc.cs+oldClusters; c++ {
		if err := rc.decref(c); err != nil {
			return err
		}
	}
	return rc.flushBlocks()
}

package rootfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// On-disk ext4 constants used by the xattr fix (see the kernel's
// Documentation/filesystems/ext4 and fs/ext4/xattr.h).
const (
	sbOffset          = 1024
	sbMagic           = 0xEF53
	xattrMagic        = 0xEA020000
	xattrHeaderSize   = 32
	xattrEntryHdrSize = 16
	incompat64bit     = 0x80
	blockHashShift    = 16
	inodeFileACLLo    = 104 // i_file_acl_lo
	inodeFileACLHi    = 118 // osd2.l_i_file_acl_high
	inodeLinksCount   = 26
	gdInodeBitmapLo   = 4
	gdInodeTableLo    = 8
)

type xattrEntry struct {
	raw   []byte // the whole entry record, padded
	index uint8
	name  []byte
	hash  uint32
}

// fixup corrects two defects of tar2ext4's output in place:
//
//   - the inode bitmap's bits past the last inode of a group must be set
//     (e2fsck: "Padding at end of inode bitmap is not set"); tar2ext4 leaves
//     them clear whenever a group has fewer than 8*blocksize inodes;
//   - external xattr blocks must list entries sorted by (name index, name
//     length, name), which the kernel's lookup relies on; values stay where
//     they are, only entry records are permuted and the block hash is
//     recomputed.
func fixup(f *os.File) error {
	var sb [1024]byte
	if _, err := f.ReadAt(sb[:], sbOffset); err != nil {
		return err
	}
	le := binary.LittleEndian
	if le.Uint16(sb[56:]) != sbMagic {
		return errors.New("not an ext4 image")
	}
	blocksCount := uint64(le.Uint32(sb[4:]))
	blockSize := int64(1024) << le.Uint32(sb[24:])
	blocksPerGroup := uint64(le.Uint32(sb[32:]))
	inodesPerGroup := int64(le.Uint32(sb[40:]))
	inodeSize := int64(le.Uint16(sb[88:]))
	firstDataBlock := int64(le.Uint32(sb[20:]))
	if le.Uint32(sb[96:])&incompat64bit != 0 || blocksPerGroup == 0 || inodeSize < 128 {
		return nil // not the layout tar2ext4 writes; leave it alone
	}
	groups := (blocksCount + blocksPerGroup - 1) / blocksPerGroup
	gdt := make([]byte, groups*32)
	if _, err := f.ReadAt(gdt, (firstDataBlock+1)*blockSize); err != nil {
		return fmt.Errorf("read group descriptors: %w", err)
	}
	table := make([]byte, inodesPerGroup*inodeSize)
	seen := map[uint64]bool{}
	for g := uint64(0); g < groups; g++ {
		if err := padInodeBitmap(f, int64(le.Uint32(gdt[g*32+gdInodeBitmapLo:]))*blockSize, inodesPerGroup, blockSize); err != nil {
			return fmt.Errorf("inode bitmap of group %d: %w", g, err)
		}
		tableBlock := int64(le.Uint32(gdt[g*32+gdInodeTableLo:]))
		if _, err := f.ReadAt(table, tableBlock*blockSize); err != nil && err != io.EOF {
			return fmt.Errorf("read inode table of group %d: %w", g, err)
		}
		for i := int64(0); i < inodesPerGroup; i++ {
			ino := table[i*inodeSize : (i+1)*inodeSize]
			if le.Uint16(ino[inodeLinksCount:]) == 0 {
				continue
			}
			blk := uint64(le.Uint32(ino[inodeFileACLLo:])) | uint64(le.Uint16(ino[inodeFileACLHi:]))<<32
			if blk == 0 || seen[blk] || blk >= blocksCount {
				continue
			}
			seen[blk] = true
			if err := fixXattrBlock(f, int64(blk)*blockSize, int(blockSize)); err != nil {
				return fmt.Errorf("xattr block %d: %w", blk, err)
			}
		}
	}
	return nil
}

func fixXattrBlock(f *os.File, off int64, blockSize int) error {
	b := make([]byte, blockSize)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	le := binary.LittleEndian
	if le.Uint32(b) != xattrMagic {
		return fmt.Errorf("bad magic %#x", le.Uint32(b))
	}
	var ents []xattrEntry
	pos := xattrHeaderSize
	for pos+4 <= blockSize && le.Uint32(b[pos:]) != 0 {
		if pos+xattrEntryHdrSize > blockSize {
			return fmt.Errorf("entry at %d overruns the block", pos)
		}
		nameLen := int(b[pos])
		size := (xattrEntryHdrSize + nameLen + 3) &^ 3
		if pos+size > blockSize {
			return fmt.Errorf("entry at %d overruns the block", pos)
		}
		ents = append(ents, xattrEntry{
			raw:   b[pos : pos+size],
			index: b[pos+1],
			name:  b[pos+xattrEntryHdrSize : pos+xattrEntryHdrSize+nameLen],
			hash:  le.Uint32(b[pos+12:]),
		})
		pos += size
	}
	less := func(x, y xattrEntry) bool {
		if x.index != y.index {
			return x.index < y.index
		}
		if len(x.name) != len(y.name) {
			return len(x.name) < len(y.name)
		}
		return bytes.Compare(x.name, y.name) < 0
	}
	sorted := sort.SliceIsSorted(ents, func(i, j int) bool { return less(ents[i], ents[j]) })
	var hash uint32
	order := append([]xattrEntry(nil), ents...)
	sort.SliceStable(order, func(i, j int) bool { return less(order[i], order[j]) })
	for _, e := range order {
		if e.hash == 0 {
			hash = 0
			break
		}
		hash = (hash << blockHashShift) ^ (hash >> (32 - blockHashShift)) ^ e.hash
	}
	if sorted && le.Uint32(b[12:]) == hash {
		return nil
	}
	var out bytes.Buffer
	for _, e := range order {
		out.Write(e.raw)
	}
	copy(b[xattrHeaderSize:pos], out.Bytes())
	le.PutUint32(b[12:], hash)
	_, err := f.WriteAt(b, off)
	return err
}

func padInodeBitmap(f *os.File, off, inodesPerGroup, blockSize int64) error {
	bits := blockSize * 8
	if inodesPerGroup >= bits {
		return nil
	}
	b := make([]byte, blockSize)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	orig := append([]byte(nil), b...)
	for i := inodesPerGroup; i < bits; i++ {
		if i%8 == 0 && i+8 <= bits {
			b[i/8] = 0xff
			i += 7
			continue
		}
		b[i/8] |= 1 << (i % 8)
	}
	if bytes.Equal(b, orig) {
		return nil
	}
	_, err := f.WriteAt(b, off)
	return err
}

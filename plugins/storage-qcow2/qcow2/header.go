package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

const (
	qcowMagic = 0x514649fb // "QFI\xfb"

	minClusterBits = 9
	// maxClusterBits is QEMU's implementation limit (2 MiB clusters).
	maxClusterBits = 21

	v2HeaderLength = 72
	v3HeaderLength = 104
	// ourHeaderLength is what we write for v3: the base fields plus the
	// compression_type byte, padded to 8 (as QEMU writes it).
	ourHeaderLength = 112

	maxBackingNameLen = 1023
	// maxL1Bytes and maxRefTableBytes are QEMU's implementation limits; an
	// image beyond them could not be opened by QEMU anyway.
	maxL1Bytes       = 32 << 20
	maxRefTableBytes = 8 << 20
	// maxVirtualSize is the hard limit on the virtual size field (QEMU's
	// maximum L1 size times the largest cluster coverage).
	maxVirtualSize = 1 << 61

	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extBitmaps       = 0x23852875
	extCrypto        = 0x0537be77
	extDataFile      = 0x44415441

	incompatDirty           = 1 << 0
	incompatCorrupt         = 1 << 1
	incompatDataFile        = 1 << 2
	incompatCompressionType = 1 << 3
	incompatExtendedL2      = 1 << 4
	incompatKnown           = incompatDirty | incompatCorrupt | incompatDataFile | incompatCompressionType | incompatExtendedL2

	compressionZlib = 0
	compressionZstd = 1
)

// Field offsets in the header that are rewritten in place.
const (
	offBackingFileOffset = 8
	offSize              = 24
	offL1Size            = 36
	offRefTableOffset    = 48
	offIncompat          = 72
	offAutoclear         = 88
)

// extension is a raw header extension, kept so that a header rewrite
// (SetBacking) preserves extensions it does not understand.
type extension struct {
	typ  uint32
	data []byte
}

type header struct {
	version               uint32
	backingFileOffset     uint64
	backingFileSize       uint32
	clusterBits           uint32
	size                  uint64
	cryptMethod           uint32
	l1Size                uint32
	l1TableOffset         uint64
	refcountTableOffset   uint64
	refcountTableClusters uint32
	nbSnapshots           uint32
	snapshotsOffset       uint64
	incompat              uint64
	compat                uint64
	autoclear             uint64
	refcountOrder         uint32
	headerLength          uint32
	compressionType       uint8
	// extraFields holds header bytes from 104 to headerLength (the
	// compression type and any future fields), preserved on rewrite.
	extraFields []byte

	backingFile   string
	backingFormat string
	extensions    []extension
	// extAreaEnd is the offset just past the end-of-extensions marker: the
	// end of header bytes that are in use (before the backing file name).
	extAreaEnd   int64
	featureNames map[[2]uint8]string
}

func (h *header) clusterSize() int64 { return 1 << h.clusterBits }

// l2Entries is the number of entries in one L2 table.
func (h *header) l2Entries() int64 { return h.clusterSize() / 8 }

// l1Needed is the number of L1 entries needed to map size bytes.
func l1Needed(size uint64, clusterBits uint32) uint64 {
	shift := 2*clusterBits - 3 // bytes covered by one L2 table = cs * cs/8
	return (size + (1 << shift) - 1) >> shift
}

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

func unsupportedf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsupported, fmt.Sprintf(format, args...))
}

func tooLargef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrTooLarge, fmt.Sprintf(format, args...))
}

// readHeader parses and sanity-checks the header and header extensions of
// an image whose file is fileSize bytes long. It allocates at most one
// cluster, and never more than fileSize bytes.
func readHeader(r io.ReaderAt, fileSize int64) (*header, error) {
	if fileSize < 4 {
		return nil, formatErr(ProblemNotQcow2, 0, "file is only %d bytes", fileSize)
	}
	var fixed [v3HeaderLength]byte
	n := int64(len(fixed))
	if fileSize < n {
		n = fileSize
	}
	if err := readFullAt(r, fixed[:n], 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	be := binary.BigEndian
	if be.Uint32(fixed[0:]) != qcowMagic {
		return nil, formatErr(ProblemNotQcow2, 0, "bad magic %#08x", be.Uint32(fixed[0:]))
	}
	if n < v2HeaderLength {
		return nil, formatErr(ProblemHeader, 0, "header truncated: file is %d bytes", fileSize)
	}
	h := &header{
		version:               be.Uint32(fixed[4:]),
		backingFileOffset:     be.Uint64(fixed[8:]),
		backingFileSize:       be.Uint32(fixed[16:]),
		clusterBits:           be.Uint32(fixed[20:]),
		size:                  be.Uint64(fixed[24:]),
		cryptMethod:           be.Uint32(fixed[32:]),
		l1Size:                be.Uint32(fixed[36:]),
		l1TableOffset:         be.Uint64(fixed[40:]),
		refcountTableOffset:   be.Uint64(fixed[48:]),
		refcountTableClusters: be.Uint32(fixed[56:]),
		nbSnapshots:           be.Uint32(fixed[60:]),
		snapshotsOffset:       be.Uint64(fixed[64:]),
	}
	switch h.version {
	case 2:
		h.refcountOrder = 4
		h.headerLength = v2HeaderLength
	case 3:
		if n < v3HeaderLength {
			return nil, formatErr(ProblemHeader, 0, "version 3 header truncated: file is %d bytes", fileSize)
		}
		h.incompat = be.Uint64(fixed[72:])
		h.compat = be.Uint64(fixed[80:])
		h.autoclear = be.Uint64(fixed[88:])
		h.refcountOrder = be.Uint32(fixed[96:])
		h.headerLength = be.Uint32(fixed[100:])
	default:
		return nil, formatErr(ProblemUnsupported, 4, "version %d (only 2 and 3 exist)", h.version)
	}
	if h.clusterBits < minClusterBits {
		return nil, formatErr(ProblemHeader, 20, "cluster_bits %d is below the minimum %d", h.clusterBits, minClusterBits)
	}
	if h.clusterBits > maxClusterBits {
		return nil, formatErr(ProblemUnsupported, 20, "cluster_bits %d: clusters above 2 MiB", h.clusterBits)
	}
	cs := h.clusterSize()
	if h.version == 3 {
		if h.headerLength < v3HeaderLength || int64(h.headerLength) > cs || h.headerLength%8 != 0 {
			return nil, formatErr(ProblemHeader, 100, "header_length %d (must be a multiple of 8 in [104, cluster size %d])", h.headerLength, cs)
		}
	}
	if h.refcountOrder > 6 {
		return nil, formatErr(ProblemHeader, 96, "refcount_order %d exceeds 6", h.refcountOrder)
	}
	if h.cryptMethod != 0 {
		return nil, formatErr(ProblemEncrypted, 32, "encrypted image (crypt_method %d)", h.cryptMethod)
	}
	if h.size > maxVirtualSize {
		return nil, formatErr(ProblemTooLarge, 24, "virtual size %d exceeds %d", h.size, uint64(maxVirtualSize))
	}

	// Read the rest of cluster 0: extensions and the backing file name.
	c0 := cs
	if fileSize < c0 {
		c0 = fileSize
	}
	buf := make([]byte, c0)
	if err := readFullAt(r, buf, 0); err != nil {
		return nil, fmt.Errorf("read header cluster: %w", err)
	}
	if int64(h.headerLength) > c0 {
		return nil, formatErr(ProblemOutsideFile, 100, "header_length %d extends beyond end of file (%d bytes)", h.headerLength, fileSize)
	}
	if h.headerLength > v3HeaderLength {
		h.extraFields = append([]byte(nil), buf[v3HeaderLength:h.headerLength]...)
		h.compressionType = buf[v3HeaderLength]
	}
	if err := h.parseExtensions(buf); err != nil {
		return nil, err
	}
	if err := h.checkFeatures(); err != nil {
		return nil, err
	}

	if h.backingFileOffset != 0 {
		end := h.backingFileOffset + uint64(h.backingFileSize)
		if h.backingFileSize > maxBackingNameLen {
			return nil, formatErr(ProblemHeader, 16, "backing file name length %d exceeds %d", h.backingFileSize, maxBackingNameLen)
		}
		if h.backingFileOffset < uint64(h.headerLength) || end > uint64(c0) {
			return nil, formatErr(ProblemHeader, 8, "backing file name at offset %d (length %d) is outside the header area", h.backingFileOffset, h.backingFileSize)
		}
		h.backingFile = string(buf[h.backingFileOffset:end])
		if h.backingFile == "" {
			return nil, formatErr(ProblemHeader, 16, "empty backing file name at offset %d", h.backingFileOffset)
		}
	}

	// Table geometry, checked against the file size so that nothing later
	// allocates based on a field the file cannot back.
	if need := l1Needed(h.size, h.clusterBits); uint64(h.l1Size) < need {
		return nil, formatErr(ProblemHeader, 36, "L1 table has %d entries but virtual size %d needs %d", h.l1Size, h.size, need)
	}
	if uint64(h.l1Size)*8 > maxL1Bytes {
		return nil, formatErr(ProblemTooLarge, 36, "L1 table of %d entries exceeds %d bytes", h.l1Size, maxL1Bytes)
	}
	if h.l1Size > 0 {
		if h.l1TableOffset%uint64(cs) != 0 || h.l1TableOffset == 0 {
			return nil, formatErr(ProblemMisaligned, 40, "L1 table offset %#x is not a nonzero multiple of the cluster size", h.l1TableOffset)
		}
		if h.l1TableOffset+uint64(h.l1Size)*8 > uint64(fileSize) {
			return nil, formatErr(ProblemOutsideFile, 40, "L1 table at %#x with %d entries extends beyond end of file (%d bytes)", h.l1TableOffset, h.l1Size, fileSize)
		}
	}
	if h.refcountTableOffset%uint64(cs) != 0 || h.refcountTableOffset == 0 {
		return nil, formatErr(ProblemMisaligned, 48, "refcount table offset %#x is not a nonzero multiple of the cluster size", h.refcountTableOffset)
	}
	rtBytes := uint64(h.refcountTableClusters) * uint64(cs)
	if h.refcountTableClusters == 0 {
		return nil, formatErr(ProblemHeader, 56, "refcount table has 0 clusters")
	}
	if rtBytes > maxRefTableBytes {
		return nil, formatErr(ProblemTooLarge, 56, "refcount table of %d clusters exceeds %d bytes", h.refcountTableClusters, maxRefTableBytes)
	}
	if h.refcountTableOffset+rtBytes > roundUp(uint64(fileSize), uint64(cs)) {
		return nil, formatErr(ProblemOutsideFile, 48, "refcount table at %#x (%d clusters) extends beyond end of file (%d bytes)", h.refcountTableOffset, h.refcountTableClusters, fileSize)
	}
	if h.nbSnapshots > 0 && h.snapshotsOffset%uint64(cs) != 0 {
		return nil, formatErr(ProblemMisaligned, 64, "snapshot table offset %#x is not cluster aligned", h.snapshotsOffset)
	}
	return h, nil
}

func (h *header) parseExtensions(buf []byte) error {
	end := int64(len(buf))
	if h.backingFileOffset != 0 && int64(h.backingFileOffset) < end {
		end = int64(h.backingFileOffset)
	}
	be := binary.BigEndian
	off := int64(h.headerLength)
	seen := map[uint32]bool{}
	for {
		if off+8 > end {
			// No end marker before the backing name / end of cluster:
			// QEMU accepts this; treat the area as ending here.
			h.extAreaEnd = off
			return nil
		}
		typ := be.Uint32(buf[off:])
		length := int64(be.Uint32(buf[off+4:]))
		if typ == extEnd {
			h.extAreaEnd = off + 8
			return nil
		}
		dataOff := off + 8
		if length > end-dataOff {
			return formatErr(ProblemHeader, off, "header extension %#08x has length %d beyond the header area (ends at %d)", typ, length, end)
		}
		data := buf[dataOff : dataOff+length]
		if seen[typ] && typ != 0 {
			return formatErr(ProblemHeader, off, "header extension %#08x appears twice", typ)
		}
		seen[typ] = true
		switch typ {
		case extBackingFormat:
			h.backingFormat = string(data)
		case extFeatureNames:
			h.featureNames = map[[2]uint8]string{}
			for i := 0; i+48 <= len(data); i += 48 {
				name := string(data[i+2 : i+48])
				if j := strings.IndexByte(name, 0); j >= 0 {
					name = name[:j]
				}
				h.featureNames[[2]uint8{data[i], data[i+1]}] = name
			}
		}
		h.extensions = append(h.extensions, extension{typ: typ, data: append([]byte(nil), data...)})
		off = dataOff + roundUpI(length, 8)
	}
}

func (h *header) hasExtension(typ uint32) bool {
	for _, e := range h.extensions {
		if e.typ == typ {
			return true
		}
	}
	return false
}

func (h *header) checkFeatures() error {
	if unknown := h.incompat &^ incompatKnown; unknown != 0 {
		var names []string
		for b := uint8(0); b < 64; b++ {
			if unknown&(1<<b) == 0 {
				continue
			}
			if n, ok := h.featureNames[[2]uint8{0, b}]; ok && n != "" {
				names = append(names, fmt.Sprintf("bit %d (%s)", b, n))
			} else {
				names = append(names, fmt.Sprintf("bit %d", b))
			}
		}
		return formatErr(ProblemUnsupported, offIncompat, "unknown incompatible features: %s", strings.Join(names, ", "))
	}
	if h.incompat&incompatDataFile != 0 || h.hasExtension(extDataFile) {
		return formatErr(ProblemExternalData, offIncompat, "external data file")
	}
	if h.incompat&incompatExtendedL2 != 0 {
		return formatErr(ProblemUnsupported, offIncompat, "extended L2 entries (subclusters)")
	}
	if h.incompat&incompatCompressionType != 0 {
		switch {
		case h.headerLength <= v3HeaderLength || h.compressionType == compressionZlib:
			return formatErr(ProblemHeader, v3HeaderLength, "compression type feature bit set but compression_type field is zlib or absent")
		case h.compressionType == compressionZstd:
			return formatErr(ProblemUnsupported, v3HeaderLength, "zstd compression type")
		default:
			return formatErr(ProblemUnsupported, v3HeaderLength, "compression type %d", h.compressionType)
		}
	} else if h.compressionType != compressionZlib {
		return formatErr(ProblemHeader, v3HeaderLength, "compression_type %d without the compression type feature bit", h.compressionType)
	}
	return nil
}

// encode returns the bytes of the header area (header, extensions, end
// marker and backing file name) for this header. The backing file offset
// and size fields are computed here.
func (h *header) encode(cs int64) ([]byte, error) {
	hl := int64(h.headerLength)
	if h.version == 2 {
		hl = v2HeaderLength
	}
	buf := make([]byte, hl, 512)
	be := binary.BigEndian
	be.PutUint32(buf[0:], qcowMagic)
	be.PutUint32(buf[4:], h.version)
	be.PutUint32(buf[20:], h.clusterBits)
	be.PutUint64(buf[24:], h.size)
	be.PutUint32(buf[32:], h.cryptMethod)
	be.PutUint32(buf[36:], h.l1Size)
	be.PutUint64(buf[40:], h.l1TableOffset)
	be.PutUint64(buf[48:], h.refcountTableOffset)
	be.PutUint32(buf[56:], h.refcountTableClusters)
	be.PutUint32(buf[60:], h.nbSnapshots)
	be.PutUint64(buf[64:], h.snapshotsOffset)
	if h.version >= 3 {
		be.PutUint64(buf[72:], h.incompat)
		be.PutUint64(buf[80:], h.compat)
		be.PutUint64(buf[88:], h.autoclear)
		be.PutUint32(buf[96:], h.refcountOrder)
		be.PutUint32(buf[100:], uint32(hl))
		copy(buf[v3HeaderLength:], h.extraFields)
	}
	appendExt := func(typ uint32, data []byte) {
		var e [8]byte
		be.PutUint32(e[0:], typ)
		be.PutUint32(e[4:], uint32(len(data)))
		buf = append(buf, e[:]...)
		buf = append(buf, data...)
		for len(buf)%8 != 0 {
			buf = append(buf, 0)
		}
	}
	if h.backingFile != "" && h.backingFormat != "" {
		appendExt(extBackingFormat, []byte(h.backingFormat))
	}
	for _, e := range h.extensions {
		if e.typ == extBackingFormat {
			continue
		}
		appendExt(e.typ, e.data)
	}
	appendExt(extEnd, nil)
	h.backingFileOffset, h.backingFileSize = 0, 0
	if h.backingFile != "" {
		if len(h.backingFile) > maxBackingNameLen {
			return nil, fmt.Errorf("backing file name is %d bytes, the limit is %d", len(h.backingFile), maxBackingNameLen)
		}
		h.backingFileOffset = uint64(len(buf))
		h.backingFileSize = uint32(len(h.backingFile))
		buf = append(buf, h.backingFile...)
	}
	be.PutUint64(buf[8:], h.backingFileOffset)
	be.PutUint32(buf[16:], h.backingFileSize)
	if int64(len(buf)) > cs {
		return nil, fmt.Errorf("header, extensions and backing file name need %d bytes, more than one cluster (%d)", len(buf), cs)
	}
	return buf, nil
}

// readFullAt reads len(p) bytes at off; bytes beyond the end of the file
// read as zeros, as they do for QEMU.
func readFullAt(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err != nil && err != io.EOF {
		return err
	}
	clear(p[n:])
	return nil
}

func roundUp(v, align uint64) uint64 { return (v + align - 1) / align * align }

func roundUpI(v, align int64) int64 { return (v + align - 1) / align * align }

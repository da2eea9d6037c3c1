// Package bzimage owns reading x86 Linux bzImage files: finding the compressed kernel inside
// one, decompressing it to the ELF vmlinux it was built from, and finding that ELF's PVH entry
// point. The guest build uses it so the VMM can boot the uncompressed kernel through PVH and
// skip the in-guest decompressor, which is slow under TCG (see guest/README.md).
//
// Layout, from the kernel's boot protocol (Documentation/arch/x86/boot.rst): the real-mode
// setup code takes (setup_sects+1) 512-byte sectors, the protected-mode part follows, and
// from protocol 2.08 the setup header says where the compressed payload lies in it
// (payload_offset, payload_length). The build appends the uncompressed size as a 32-bit
// little-endian number to every payload (gzip's own trailer ends the same way).
package bzimage

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// Setup header fields (offsets into the file).
const (
	offSetupSects    = 0x1f1
	offHeaderMagic   = 0x202
	offVersion       = 0x206
	offPayloadOffset = 0x248
	offPayloadLength = 0x24c
	headerEnd        = 0x250

	// minVersion is the first boot protocol with payload_offset and payload_length.
	minVersion = 0x0208
)

// ErrNotBzImage says the input is not a bzImage this package can read.
var ErrNotBzImage = errors.New("not a bzImage")

// ErrUnsupportedCodec says the payload is compressed with a codec this package does not decode.
var ErrUnsupportedCodec = errors.New("unsupported kernel compression")

// ErrNoPVH says the ELF kernel has no PVH entry point note.
var ErrNoPVH = errors.New("no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY): the kernel was built without CONFIG_PVH")

// Payload is the compressed kernel found in a bzImage.
type Payload struct {
	// Codec is the compression: "gzip", "bzip2", "lz4", "zstd", "xz", "lzma" or "lzo".
	Codec string
	// Data is the compressed payload, including the appended uncompressed size.
	Data []byte
}

// FindPayload returns the compressed kernel inside bzImage b.
func FindPayload(b []byte) (Payload, error) {
	if len(b) < headerEnd || string(b[offHeaderMagic:offHeaderMagic+4]) != "HdrS" {
		return Payload{}, fmt.Errorf("no \"HdrS\" setup header at offset %#x: %w", offHeaderMagic, ErrNotBzImage)
	}
	if v := binary.LittleEndian.Uint16(b[offVersion:]); v < minVersion {
		return Payload{}, fmt.Errorf("boot protocol %d.%02d predates payload_offset (2.08): %w", v>>8, v&0xff, ErrNotBzImage)
	}
	sects := int(b[offSetupSects])
	if sects == 0 {
		sects = 4 // the boot protocol's default for old kernels
	}
	start := uint64(sects+1)*512 + uint64(binary.LittleEndian.Uint32(b[offPayloadOffset:]))
	n := uint64(binary.LittleEndian.Uint32(b[offPayloadLength:]))
	if n < 8 || start+n > uint64(len(b)) {
		return Payload{}, fmt.Errorf("payload at %d, %d bytes, lies outside the %d-byte file: %w", start, n, len(b), ErrNotBzImage)
	}
	data := b[start : start+n]
	codec, err := detectCodec(data)
	if err != nil {
		return Payload{}, err
	}
	return Payload{Codec: codec, Data: data}, nil
}

var magics = []struct {
	codec string
	magic []byte
}{
	{"gzip", []byte{0x1f, 0x8b}},
	{"bzip2", []byte("BZh")},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}}, // the legacy frame `lz4 -l` writes
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{"lzo", []byte{0x89, 'L', 'Z', 'O'}},
	{"lzma", []byte{0x5d, 0x00, 0x00}},
}

func detectCodec(data []byte) (string, error) {
	for _, m := range magics {
		if bytes.HasPrefix(data, m.magic) {
			return m.codec, nil
		}
	}
	return "", fmt.Errorf("payload starts with % x, which is no known kernel compression: %w", data[:min(len(data), 6)], ErrUnsupportedCodec)
}

// maxKernel bounds the decompressed size, so a corrupt size field cannot exhaust memory.
const maxKernel = 1 << 30

// Decompress returns the uncompressed kernel (the ELF vmlinux) in p.
func (p Payload) Decompress() ([]byte, error) {
	if len(p.Data) < 8 {
		return nil, fmt.Errorf("a %d-byte payload is too short to hold a kernel: %w", len(p.Data), ErrNotBzImage)
	}
	want := binary.LittleEndian.Uint32(p.Data[len(p.Data)-4:])
	if want > maxKernel {
		return nil, fmt.Errorf("payload says the kernel is %d bytes, more than the %d this reads: %w", want, maxKernel, ErrNotBzImage)
	}
	// Every codec but gzip has the size appended after its stream; gzip's trailer is the
	// stream's own end.
	stream := p.Data[:len(p.Data)-4]
	// Buffers start at what the size says, unless that is far more than any kernel
	// compresses by: a corrupt size must not allocate a gigabyte up front.
	hint := min(want, uint32(min(16*len(p.Data), maxKernel)))
	var out []byte
	var err error
	switch p.Codec {
	case "gzip":
		out, err = gunzip(p.Data, hint)
	case "bzip2":
		out, err = readAll(bzip2.NewReader(bytes.NewReader(stream)), hint)
	case "zstd":
		out, err = unzstd(stream, hint)
	case "lz4":
		out, err = unlz4Legacy(stream, hint)
	default:
		return nil, fmt.Errorf("%s: %w (this reads gzip, bzip2, lz4 and zstd)", p.Codec, ErrUnsupportedCodec)
	}
	if err != nil {
		return nil, fmt.Errorf("decompress %s payload: %w", p.Codec, err)
	}
	if uint32(len(out)) != want {
		return nil, fmt.Errorf("decompressed %s payload is %d bytes, but the bzImage says %d: %w", p.Codec, len(out), want, ErrNotBzImage)
	}
	return out, nil
}

func gunzip(data []byte, want uint32) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	zr.Multistream(false)
	return readAll(zr, want)
}

func unzstd(data []byte, want uint32) ([]byte, error) {
	d, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(maxKernel), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.DecodeAll(data, make([]byte, 0, want))
}

// readAll reads r to its end, at most maxKernel+1 bytes.
func readAll(r io.Reader, hint uint32) ([]byte, error) {
	buf := bytes.NewBuffer(make([]byte, 0, hint))
	_, err := io.Copy(buf, io.LimitReader(r, maxKernel+1))
	return buf.Bytes(), err
}

// lz4 legacy frame: the magic, then blocks, each a 32-bit little-endian compressed size and
// an LZ4 block of at most 8 MiB uncompressed. A repeated magic starts a concatenated frame.
const (
	lz4LegacyMagic     = 0x184c2102
	lz4LegacyBlockSize = 8 << 20
)

func unlz4Legacy(data []byte, want uint32) ([]byte, error) {
	out := make([]byte, 0, want)
	var block []byte
	for off := 0; off < len(data); {
		if len(data)-off < 4 {
			return nil, fmt.Errorf("%d stray bytes at offset %d", len(data)-off, off)
		}
		n := binary.LittleEndian.Uint32(data[off:])
		off += 4
		if n == lz4LegacyMagic {
			continue
		}
		if uint64(n) > uint64(len(data)-off) {
			return nil, fmt.Errorf("block at offset %d is %d bytes, past the end of the payload", off-4, n)
		}
		if block == nil {
			block = make([]byte, lz4LegacyBlockSize)
		}
		k, err := lz4.UncompressBlock(data[off:off+int(n)], block)
		if err != nil {
			return nil, fmt.Errorf("block at offset %d: %w", off-4, err)
		}
		if len(out)+k > maxKernel {
			return nil, fmt.Errorf("kernel exceeds %d bytes", maxKernel)
		}
		out = append(out, block[:k]...)
		off += int(n)
	}
	return out, nil
}

// Extract returns the ELF vmlinux inside bzImage b, checked to be an x86-64 ELF with a PVH
// entry point.
func Extract(b []byte) ([]byte, error) {
	p, err := FindPayload(b)
	if err != nil {
		return nil, err
	}
	k, err := p.Decompress()
	if err != nil {
		return nil, err
	}
	if _, err := PVHEntry(k); err != nil {
		return nil, err
	}
	return k, nil
}

// XEN_ELFNOTE_PHYS32_ENTRY, in a note named "Xen": the 32-bit physical address a PVH loader
// (QEMU's -kernel with an ELF, Firecracker, cloud-hypervisor) jumps to.
const xenElfnotePhys32Entry = 18

// PVHEntry returns the PVH entry point of ELF kernel k.
func PVHEntry(k []byte) (uint32, error) {
	f, err := elf.NewFile(bytes.NewReader(k))
	if err != nil {
		return 0, fmt.Errorf("the kernel is not an ELF file: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return 0, fmt.Errorf("the kernel is a %v %v ELF, not x86-64", f.Class, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		notes, err := io.ReadAll(p.Open())
		if err != nil {
			return 0, fmt.Errorf("read the ELF notes: %w", err)
		}
		if e, ok := findNote(notes, f.ByteOrder, "Xen", xenElfnotePhys32Entry); ok && len(e) >= 4 {
			return f.ByteOrder.Uint32(e), nil
		}
	}
	return 0, ErrNoPVH
}

// findNote returns the descriptor of the note named name with type typ in an ELF note
// segment (entries of namesz, descsz, type, then name and descriptor, each padded to 4).
func findNote(b []byte, bo binary.ByteOrder, name string, typ uint32) ([]byte, bool) {
	pad := func(n uint32) uint64 { return (uint64(n) + 3) &^ 3 }
	for len(b) >= 12 {
		namesz, descsz, t := bo.Uint32(b), bo.Uint32(b[4:]), bo.Uint32(b[8:])
		b = b[12:]
		if pad(namesz)+pad(descsz) > uint64(len(b)) {
			return nil, false
		}
		n := string(bytes.TrimRight(b[:namesz], "\x00"))
		desc := b[pad(namesz) : pad(namesz)+uint64(descsz)]
		if n == name && t == typ {
			return desc, true
		}
		b = b[pad(namesz)+pad(descsz):]
	}
	return nil, false
}

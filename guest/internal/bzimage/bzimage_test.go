package bzimage

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// elfKernel returns a minimal x86-64 ELF executable whose one PT_NOTE segment holds a
// "Xen" note of type typ with entry as its descriptor, then pad bytes of filler.
func elfKernel(typ uint32, entry uint32, pad int) []byte {
	var note bytes.Buffer
	le := binary.LittleEndian
	// An unrelated note first, so the search must walk past it.
	for _, n := range []struct {
		name string
		typ  uint32
		desc []byte
	}{{"GNU", 3, []byte("buildid!")}, {"Xen", typ, le.AppendUint32(nil, entry)}} {
		name := append([]byte(n.name), 0)
		binary.Write(&note, le, [3]uint32{uint32(len(name)), uint32(len(n.desc)), n.typ})
		note.Write(name)
		note.Write(make([]byte, (4-len(name)%4)%4))
		note.Write(n.desc)
	}
	const ehsize, phsize = 64, 56
	var b bytes.Buffer
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	binary.Write(&b, le, struct {
		Type, Machine                       uint16
		Version                             uint32
		Entry, Phoff, Shoff                 uint64
		Flags                               uint32
		Ehsize, Phentsize, Phnum, Shentsize uint16
		Shnum, Shstrndx                     uint16
	}{Type: 2, Machine: 62, Version: 1, Entry: 0x1000000, Phoff: ehsize, Ehsize: ehsize, Phentsize: phsize, Phnum: 1, Shentsize: 64})
	binary.Write(&b, le, struct {
		Type, Flags                             uint32
		Off, Vaddr, Paddr, Filesz, Memsz, Align uint64
	}{Type: 4, Flags: 4, Off: ehsize + phsize, Filesz: uint64(note.Len()), Memsz: uint64(note.Len()), Align: 4})
	b.Write(note.Bytes())
	// Compressible but not trivially so.
	for i := 0; i < pad; i++ {
		b.WriteByte(byte(i*7) ^ byte(i>>9))
	}
	return b.Bytes()
}

// bzImage wraps payload the way the x86 build does: setupSects+1 sectors of real-mode
// setup, then the protected-mode part with the payload at payloadOffset inside it.
func bzImage(payload []byte, setupSects byte, payloadOffset int) []byte {
	setup := (int(setupSects) + 1) * 512
	if setupSects == 0 {
		setup = 5 * 512
	}
	b := make([]byte, setup+payloadOffset+len(payload)+1000)
	b[offSetupSects] = setupSects
	copy(b[offHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(b[offVersion:], 0x020f)
	binary.LittleEndian.PutUint32(b[offPayloadOffset:], uint32(payloadOffset))
	binary.LittleEndian.PutUint32(b[offPayloadLength:], uint32(len(payload)))
	copy(b[setup+payloadOffset:], payload)
	return b
}

func withSize(stream []byte, n int) []byte {
	return binary.LittleEndian.AppendUint32(stream, uint32(n))
}

// lz4Legacy is what `lz4 -l` writes: the legacy magic, then 8 MiB blocks each prefixed by
// its compressed size.
func lz4Legacy(t testing.TB, data []byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	for len(data) > 0 {
		chunk := data[:min(len(data), lz4LegacyBlockSize)]
		data = data[len(chunk):]
		dst := make([]byte, lz4.CompressBlockBound(len(chunk)))
		n, err := lz4.CompressBlock(chunk, dst, nil)
		if err != nil || n == 0 {
			t.Fatalf("lz4 compress: %d, %v", n, err)
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(n))
		out = append(out, dst[:n]...)
	}
	return out
}

func compress(t testing.TB, codec string, data []byte) []byte {
	t.Helper()
	switch codec {
	case "lz4":
		return withSize(lz4Legacy(t, data), len(data))
	case "gzip":
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write(data)
		w.Close()
		return b.Bytes() // its trailer already ends with the size
	case "zstd":
		e, err := zstd.NewWriter(nil)
		if err != nil {
			t.Fatal(err)
		}
		return withSize(e.EncodeAll(data, nil), len(data))
	}
	t.Fatalf("codec %s", codec)
	return nil
}

func TestExtractEachCodec(t *testing.T) {
	// Over 8 MiB, so the lz4 stream has more than one block.
	kernel := elfKernel(xenElfnotePhys32Entry, 0x1000abc, 9<<20)
	for _, codec := range []string{"lz4", "gzip", "zstd"} {
		t.Run(codec, func(t *testing.T) {
			img := bzImage(compress(t, codec, kernel), 27, 716)
			p, err := FindPayload(img)
			if err != nil {
				t.Fatal(err)
			}
			if p.Codec != codec {
				t.Fatalf("codec %q, want %q", p.Codec, codec)
			}
			got, err := Extract(img)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, kernel) {
				t.Fatalf("extracted %d bytes, not the %d-byte kernel put in", len(got), len(kernel))
			}
			if e, err := PVHEntry(got); err != nil || e != 0x1000abc {
				t.Fatalf("PVH entry %#x, %v; want 0x1000abc", e, err)
			}
		})
	}
}

func TestExtractRefusesBadInput(t *testing.T) {
	kernel := elfKernel(xenElfnotePhys32Entry, 0x1000000, 4096)
	good := compress(t, "lz4", kernel)
	noPVH := compress(t, "lz4", elfKernel(17, 0x1000000, 4096)) // another Xen note type
	wrongSize := withSize(good[:len(good)-4], len(kernel)+1)
	truncated := withSize(good[:len(good)/2], len(kernel))
	xz := withSize([]byte{0xfd, '7', 'z', 'X', 'Z', 0x00, 1, 2, 3, 4}, 100)
	notELF := compress(t, "zstd", bytes.Repeat([]byte("not an elf"), 100))

	oldProto := bzImage(good, 27, 0)
	binary.LittleEndian.PutUint16(oldProto[offVersion:], 0x0207)
	outside := bzImage(good, 27, 0)
	binary.LittleEndian.PutUint32(outside[offPayloadLength:], uint32(len(outside)))

	for _, c := range []struct {
		name string
		img  []byte
		want error
	}{
		{"empty", nil, ErrNotBzImage},
		{"ELF rather than bzImage", kernel, ErrNotBzImage},
		{"boot protocol 2.07", oldProto, ErrNotBzImage},
		{"payload past the end", outside, ErrNotBzImage},
		{"no PVH note", bzImage(noPVH, 27, 0), ErrNoPVH},
		{"size mismatch", bzImage(wrongSize, 27, 0), ErrNotBzImage},
		{"truncated stream", bzImage(truncated, 27, 0), nil},
		{"xz", bzImage(xz, 27, 0), ErrUnsupportedCodec},
		{"unknown codec", bzImage([]byte("plain text payload"), 27, 0), ErrUnsupportedCodec},
		{"payload not an ELF", bzImage(notELF, 27, 0), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, err := Extract(c.img)
			if err == nil {
				t.Fatalf("Extract succeeded with %d bytes", len(k))
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
}

// setup_sects = 0 means 4, as in the oldest kernels.
func TestZeroSetupSectsMeansFour(t *testing.T) {
	kernel := elfKernel(xenElfnotePhys32Entry, 0x1000000, 100)
	got, err := Extract(bzImage(compress(t, "gzip", kernel), 0, 10))
	if err != nil || !bytes.Equal(got, kernel) {
		t.Fatalf("Extract: %d bytes, %v", len(got), err)
	}
}

// The guest build's kernel (Debian's cloud kernel, lz4) has a PVH entry point.
func TestRealGuestKernel(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "..", "..", "build", "guest", "vmlinuz")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s not built (make guest)", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	k, err := Extract(b)
	if err != nil {
		t.Fatal(err)
	}
	e, err := PVHEntry(k)
	if err != nil || e == 0 {
		t.Fatalf("PVH entry %#x, %v", e, err)
	}
	if len(k) <= len(b) {
		t.Errorf("vmlinux is %d bytes, no larger than the %d-byte bzImage", len(k), len(b))
	}
	t.Logf("%s: %d-byte vmlinux, PVH entry %#x", path, len(k), e)
}

// Extract never panics and never returns a kernel without a PVH note, whatever the file.
func FuzzExtract(f *testing.F) {
	kernel := elfKernel(xenElfnotePhys32Entry, 0x1000000, 64)
	for _, codec := range []string{"lz4", "gzip", "zstd"} {
		f.Add(bzImage(compress(f, codec, kernel), 1, 0))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := Extract(b)
		if err != nil {
			return
		}
		if _, err := PVHEntry(k); err != nil {
			t.Fatalf("Extract returned a kernel PVHEntry refuses: %v", err)
		}
	})
}

package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// qemuWrites are qemu-io commands covering data, zero (with and without
// unmap), partial-cluster and L2-crossing writes.
var qemuWrites = []string{
	"write -P 0xab 0 1M",
	"write -P 0xcd 3000 5000",
	"write -z 64k 128k",
	"write -z -u 512k 64k",
	"write -P 0x11 7M 1536k",
	"write -z 7500k 4k",
	"write -P 0x22 31M 1M",
}

func TestQemuWrittenImagesReadBack(t *testing.T) {
	for _, opts := range []string{"cluster_size=65536", "cluster_size=512", "cluster_size=2M", "compat=0.10", "refcount_bits=1,cluster_size=4096", "refcount_bits=64", "lazy_refcounts=on"} {
		t.Run(opts, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), "q.qcow2")
			runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, p, "32M")
			qemuIO(t, p, "qcow2", qemuWrites...)
			want := qemuRaw(t, p)
			img := openRO(t, p)
			assertSame(t, "our read", readAll(t, img), want)

			// Then write through us and let qemu read it.
			img.Close()
			rw, err := Open(p, OpenOptions{Writable: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range []struct {
				off int64
				n   int
			}{{100, 300}, {64<<10 + 5, 70000}, {512<<10 + 1, 10}, {7500<<10 + 100, 9000}, {20 << 20, 1 << 20}} {
				data := randBytes(w.off, w.n)
				mustWrite(t, rw, data, w.off)
				copy(want[w.off:], data)
			}
			mustClose(t, rw)
			qemuCheck(t, p)
			assertSame(t, "qemu read after our writes", qemuRaw(t, p), want)
		})
	}
}

func TestQemuWritesIntoOurImages(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	img := mustCreate(t, base, CreateOptions{Size: 32 << 20, ClusterSize: 4096})
	mustWrite(t, img, fill(0x77, 4<<20), 0)
	mustClose(t, img)
	top := filepath.Join(dir, "top.qcow2")
	mustClose(t, mustCreate(t, top, CreateOptions{BackingFile: "base.qcow2", BackingFormat: "qcow2"}))

	qemuIO(t, base, "qcow2", "write -P 0x99 10M 64k")
	qemuIO(t, top, "qcow2", qemuWrites...)
	qemuCheck(t, base)
	qemuCheck(t, top)
	want := qemuRaw(t, top)
	got := readAll(t, openRO(t, top))
	assertSame(t, "overlay written by qemu-io", got, want)
	// Spot checks that do not depend on qemu-img convert.
	if !bytes.Equal(got[1<<20:2<<20], fill(0x77, 1<<20)) {
		t.Fatal("backing data not visible through overlay")
	}
	if !bytes.Equal(got[64<<10:192<<10], make([]byte, 128<<10)) {
		t.Fatal("write -z over backing data does not read as zeros")
	}
	if !bytes.Equal(got[10<<20:10<<20+64<<10], fill(0x99, 64<<10)) {
		t.Fatal("data written into the base not visible")
	}
}

func TestCompressedClusters(t *testing.T) {
	for _, cs := range []string{"512", "65536", "2M"} {
		t.Run(cs, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			raw := filepath.Join(dir, "src.raw")
			// Compressible but not trivial content, with zero and random
			// (incompressible) regions.
			data := make([]byte, 6<<20)
			for i := 0; i < 2<<20; i++ {
				data[i] = byte(i/7) ^ byte(i>>13)
			}
			copy(data[3<<20:], randBytes(3, 1<<20))
			copy(data[5<<20:], bytes.Repeat([]byte("boxctl qcow2 "), 40000))
			if err := os.WriteFile(raw, data, 0o644); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "c.qcow2")
			runTool(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size="+cs, raw, p)
			res := qemuCheck(t, p)
			if res.Compressed == 0 {
				t.Fatalf("qemu-img made no compressed clusters: %+v", res)
			}
			img := openRO(t, p)
			assertSame(t, "compressed image", readAll(t, img), data)
			img.Close()

			// Overwrite parts of compressed clusters: COW from compressed
			// data and refcount decrements on shared host clusters.
			rw, err := Open(p, OpenOptions{Writable: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, off := range []int64{0, 100, 1 << 20, 5<<20 + 3} {
				d := randBytes(off, 3000)
				mustWrite(t, rw, d, off)
				copy(data[off:], d)
			}
			mustClose(t, rw)
			qemuCheck(t, p)
			assertSame(t, "after overwriting compressed clusters", qemuRaw(t, p), data)
		})
	}
}

func TestZeroClustersAndExtents(t *testing.T) {
	p := filepath.Join(t.TempDir(), "z.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "4M")
	qemuIO(t, p, "qcow2", "write -P 0x11 0 1M", "write -z 128k 128k", "write -z -u 512k 64k", "write -z 2M 64k")
	img := openRO(t, p)
	ext, err := img.Extents(0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{
		{0, 128 << 10, ExtentData, 0},
		{128 << 10, 128 << 10, ExtentZero, 0},
		{256 << 10, 256 << 10, ExtentData, 0},
		{512 << 10, 64 << 10, ExtentZero, 0},
		{576 << 10, 448 << 10, ExtentData, 0},
		{1 << 20, 3 << 20, ExtentZero, 0}, // unallocated, no backing file
	}
	if fmt.Sprint(ext) != fmt.Sprint(want) {
		t.Fatalf("extents:\n got %v\nwant %v", ext, want)
	}
	img.Close()

	// Partial writes into a preallocated zero cluster (write -z without
	// -u keeps the allocation) must keep the rest of the cluster zero.
	rw, err := Open(p, OpenOptions{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, rw, fill(0xee, 10), 128<<10+100)
	mustWrite(t, rw, fill(0xee, 10), 512<<10+100)
	mustClose(t, rw)
	qemuCheck(t, p)
	qemuIO(t, p, "qcow2", "read -P 0 128k 100", "read -P 0xee 131172 10", "read -P 0 131182 130962",
		"read -P 0 512k 100", "read -P 0xee 524388 10", "read -P 0x11 576k 448k")
}

func TestUnsupportedFeatures(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, opts string
		problem    Problem
	}{
		{"zstd", "compression_type=zstd", ProblemUnsupported},
		{"extended_l2", "extended_l2=on", ProblemUnsupported},
	}
	for _, c := range cases {
		p := filepath.Join(dir, c.name+".qcow2")
		runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", c.opts, p, "1M")
		_, err := Open(p, OpenOptions{})
		var fe *FormatError
		if !errors.Is(err, ErrUnsupported) || !errors.As(err, &fe) || fe.Problem != c.problem {
			t.Errorf("%s: Open error %v, want %v", c.name, err, c.problem)
		}
	}

	raw := filepath.Join(dir, "plain.raw")
	os.WriteFile(raw, make([]byte, 4096), 0o644)
	if _, err := Open(raw, OpenOptions{}); !errors.Is(err, ErrNotQcow2) {
		t.Errorf("raw file: %v", err)
	}

	// Encryption and an unknown incompatible feature, patched into a
	// valid image (qemu-img needs secrets for real encryption).
	base := filepath.Join(dir, "base.qcow2")
	mustClose(t, mustCreate(t, base, CreateOptions{Size: 1 << 20}))
	enc := patchCopy(t, base, "enc.qcow2", func(b []byte) { be32(b, 32, 2) })
	if _, err := Open(enc, OpenOptions{}); !isProblem(err, ProblemEncrypted) || !errors.Is(err, ErrUnsupported) {
		t.Errorf("encrypted: %v", err)
	}
	unk := patchCopy(t, base, "unk.qcow2", func(b []byte) { be64(b, 72, 1<<40) })
	if _, err := Open(unk, OpenOptions{}); !isProblem(err, ProblemUnsupported) {
		t.Errorf("unknown incompatible feature: %v", err)
	}
	// Writing needs exact refcounts: refuse a dirty image.
	dirty := patchCopy(t, base, "dirty.qcow2", func(b []byte) { be64(b, 72, 1) })
	if _, err := Open(dirty, OpenOptions{Writable: true}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("writable open of dirty image: %v", err)
	}
	if _, err := Open(dirty, OpenOptions{}); err != nil {
		t.Errorf("read-only open of dirty image: %v", err)
	}
}

func TestInternalSnapshotsReadOnly(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1M")
	qemuIO(t, p, "qcow2", "write -P 0x01 0 64k")
	runTool(t, "qemu-img", "snapshot", "-c", "snap1", p)
	qemuIO(t, p, "qcow2", "write -P 0x02 0 32k")
	img := openRO(t, p)
	assertSame(t, "active layer of image with a snapshot", readAll(t, img), qemuRaw(t, p))
	if _, err := Open(p, OpenOptions{Writable: true}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("writable open with snapshots: %v", err)
	}
}

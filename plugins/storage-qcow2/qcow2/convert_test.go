package qcow2

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// makeChain builds raw base (sparse) <- qemu-made qcow2 mid (with zero and
// compressed-free data) <- our top, and returns the top's path.
func makeChain(t *testing.T, dir string) string {
	t.Helper()
	base := filepath.Join(dir, "base.raw")
	f, err := os.Create(base)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(24 << 20)
	f.WriteAt(randBytes(1, 3<<20), 1<<20)
	f.WriteAt(make([]byte, 1<<20), 6<<20) // allocated zeros
	f.WriteAt(fill(0x10, 100000), 20<<20+123)
	f.Close()
	mid := filepath.Join(dir, "mid.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-o", "cluster_size=16384", mid, "28M")
	qemuIO(t, mid, "qcow2", "write -P 0x21 2M 512k", "write -z 3M 256k", "write -P 0x22 25M 100k")
	top := filepath.Join(dir, "top.qcow2")
	img := mustCreate(t, top, CreateOptions{BackingFile: "mid.qcow2", BackingFormat: "qcow2", Size: 32 << 20})
	mustWrite(t, img, randBytes(2, 300000), 1<<20+5000)
	mustWrite(t, img, fill(0x33, 70000), 30<<20)
	mustWrite(t, img, make([]byte, 128<<10), 20<<20) // zeros hiding base data
	mustClose(t, img)
	return top
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

func TestConvertMatchesQemu(t *testing.T) {
	dir := t.TempDir()
	top := makeChain(t, dir)
	want := qemuRaw(t, top)
	for _, format := range []string{"qcow2", "raw"} {
		t.Run(format, func(t *testing.T) {
			ours := filepath.Join(dir, "ours."+format)
			var calls int
			err := Convert(context.Background(), top, ours, ConvertOptions{Format: format, Progress: func(done, total int64) {
				calls++
				if done > total || total != 32<<20 {
					t.Errorf("progress %d/%d", done, total)
				}
			}})
			if err != nil {
				t.Fatal(err)
			}
			if calls == 0 {
				t.Error("progress never called")
			}
			theirs := filepath.Join(dir, "theirs."+format)
			runTool(t, "qemu-img", "convert", "-O", format, top, theirs)
			runTool(t, "qemu-img", "compare", "-f", "qcow2", "-F", format, top, ours)
			runTool(t, "qemu-img", "compare", "-f", format, "-F", format, theirs, ours)
			if format == "qcow2" {
				qemuCheck(t, ours)
				q := qemuInfo(t, ours)
				if len(q) != 1 || q[0].BackingFilename != "" {
					t.Fatalf("output is not standalone: %+v", q)
				}
				img := openRO(t, ours)
				assertSame(t, "our read of our output", readAll(t, img), want)
			} else {
				b, _ := os.ReadFile(ours)
				assertSame(t, "raw output", b, want)
			}
			// Sparse: no more space than qemu-img's own output (plus
			// a little metadata slack).
			if a, q := allocated(t, ours), allocated(t, theirs); a > q+256<<10 {
				t.Errorf("our %s output allocates %d bytes, qemu-img's %d", format, a, q)
			}
		})
	}
}

func TestChainExtents(t *testing.T) {
	dir := t.TempDir()
	top := makeChain(t, dir)
	img := openRO(t, top)
	ext, err := img.ChainExtents(0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	// Every data byte must be covered by a data extent, and the extents
	// must tile the image.
	want := qemuRaw(t, top)
	var pos int64
	for _, e := range ext {
		if e.Offset != pos || e.Length <= 0 {
			t.Fatalf("extents do not tile: %v", ext)
		}
		if e.Kind == ExtentZero {
			for i := e.Offset; i < e.Offset+e.Length; i++ {
				if want[i] != 0 {
					t.Fatalf("non-zero byte %d inside zero extent %+v", i, e)
				}
			}
		}
		pos += e.Length
	}
	if pos != img.Size() {
		t.Fatalf("extents cover %d of %d bytes", pos, img.Size())
	}
	depthAt := func(off int64) (ExtentKind, int) {
		for _, e := range ext {
			if off >= e.Offset && off < e.Offset+e.Length {
				return e.Kind, e.Depth
			}
		}
		return 0, -1
	}
	for _, c := range []struct {
		off   int64
		kind  ExtentKind
		depth int
	}{
		{0, ExtentZero, 2},              // hole in the raw base
		{1<<20 + 6000, ExtentData, 0},   // ours
		{2<<20 + 400000, ExtentData, 1}, // mid
		{3<<20 + 1000, ExtentZero, 1},   // write -z in mid
		{4<<20 - 100, ExtentData, 2},    // base data
		{30<<20 + 10, ExtentData, 0},    // ours, beyond base
		{29 << 20, ExtentZero, 0},       // beyond mid's size
		{26 << 20, ExtentZero, 1},       // beyond base's size, inside mid
		{20<<20 + 1000, ExtentData, 0},  // our zeros hiding base data
		{6<<20 + 10, ExtentData, 2},     // allocated zeros in the raw base
	} {
		k, d := depthAt(c.off)
		if k != c.kind || d != c.depth {
			t.Errorf("offset %d: got %v depth %d, want %v depth %d", c.off, k, d, c.kind, c.depth)
		}
	}
	own, err := img.Extents(0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	if own[0].Kind != ExtentBacking {
		t.Errorf("first extent of the top alone: %+v", own[0])
	}
}

func TestConvertRawSourceAndCancel(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	data := make([]byte, 10<<20+1000)
	copy(data[3<<20:], randBytes(5, 2<<20))
	os.WriteFile(src, data, 0o644)
	dst := filepath.Join(dir, "dst.qcow2")
	if err := Convert(context.Background(), src, dst, ConvertOptions{ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, dst)
	got := readAll(t, openRO(t, dst))
	// Virtual size is rounded up to 512 bytes, like qemu-img.
	assertSame(t, "from raw", got[:len(data)], data)
	if len(got) != 10<<20+1024 {
		t.Fatalf("size %d", len(got))
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dst2 := filepath.Join(dir, "cancelled.qcow2")
	if err := Convert(ctx, src, dst2, ConvertOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled convert: %v", err)
	}
	if _, err := os.Stat(dst2); !os.IsNotExist(err) {
		t.Fatalf("output of failed convert left behind: %v", err)
	}
	if err := Convert(context.Background(), src, dst, ConvertOptions{}); !errors.Is(err, os.ErrExist) {
		t.Fatalf("convert over existing output: %v", err)
	}
	if _, err := os.Stat(dst); err != nil {
		t.Fatalf("existing output removed by failed convert: %v", err)
	}
}

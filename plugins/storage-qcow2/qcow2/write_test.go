package qcow2

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// randomWrites applies n random writes (sizes from a byte to several
// clusters, some crossing L2 boundaries) to img and to the reference.
func randomWrites(t *testing.T, img *Image, ref []byte, seed int64, n int, maxLen int) {
	t.Helper()
	r := rand.New(rand.NewSource(seed))
	for i := 0; i < n; i++ {
		l := 1 + r.Intn(maxLen)
		if l > len(ref) {
			l = len(ref)
		}
		off := r.Intn(len(ref) - l + 1)
		if r.Intn(4) == 0 { // cluster aligned sometimes
			cs := int(img.ClusterSize())
			off = off / cs * cs
		}
		data := randBytes(int64(r.Int()), l)
		mustWrite(t, img, data, int64(off))
		copy(ref[off:], data)
	}
}

func TestWriteMatrix(t *testing.T) {
	cases := []struct {
		cs, refBits int
		size        int64
	}{
		{512, 1, 2 << 20}, {512, 2, 2 << 20}, {512, 4, 2 << 20}, {512, 8, 2 << 20},
		{512, 16, 4 << 20}, {512, 32, 2 << 20}, {512, 64, 4 << 20},
		{4096, 16, 16 << 20}, {65536, 16, 64 << 20}, {65536, 64, 32 << 20}, {2 << 20, 16, 64 << 20},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("cs%d_ref%d", c.cs, c.refBits), func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), "w.qcow2")
			img := mustCreate(t, p, CreateOptions{Size: c.size, ClusterSize: c.cs, RefcountBits: c.refBits})
			ref := make([]byte, c.size)
			randomWrites(t, img, ref, int64(c.cs+c.refBits), 60, 3*c.cs+100)
			// A large sequential write: many clusters at once.
			big := randBytes(7, int(c.size/2))
			mustWrite(t, img, big, c.size/4+3)
			copy(ref[c.size/4+3:], big)
			randomWrites(t, img, ref, 99, 30, c.cs*2)
			assertSame(t, "read back before close", readAll(t, img), ref)
			mustClose(t, img)
			qemuCheck(t, p)
			assertSame(t, "qemu-img convert", qemuRaw(t, p), ref)
			img2 := openRO(t, p)
			assertSame(t, "reopened", readAll(t, img2), ref)
		})
	}
}

func TestRefcountTableGrowth(t *testing.T) {
	p := filepath.Join(t.TempDir(), "g.qcow2")
	img := mustCreate(t, p, CreateOptions{Size: 16 << 20, ClusterSize: 512, RefcountBits: 64})
	data := randBytes(1, 16<<20)
	// Write in pieces so that the table grows several times.
	for off := 0; off < len(data); off += 256 << 10 {
		mustWrite(t, img, data[off:off+256<<10], int64(off))
	}
	if img.rc.tableClusters < 8 {
		t.Fatalf("refcount table has %d clusters; expected it to have grown", img.rc.tableClusters)
	}
	mustClose(t, img)
	qemuCheck(t, p)
	assertSame(t, "qemu-img convert", qemuRaw(t, p), data)
}

func TestResize(t *testing.T) {
	dir := t.TempDir()
	for _, cs := range []int{512, 65536} {
		p := filepath.Join(dir, fmt.Sprintf("r%d.qcow2", cs))
		img := mustCreate(t, p, CreateOptions{Size: 1 << 20, ClusterSize: cs})
		ref := make([]byte, 1<<20)
		randomWrites(t, img, ref, 5, 20, 5000)
		if err := img.Resize(512 << 10); !errors.Is(err, ErrUnsupported) {
			t.Fatalf("shrink: got %v, want ErrUnsupported", err)
		}
		if _, err := img.WriteAt([]byte{1}, 1<<20); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("write past end: got %v, want ErrOutOfRange", err)
		}
		newSize := int64(64<<20 + 1000) // rounded up to 512
		if err := img.Resize(newSize); err != nil {
			t.Fatal(err)
		}
		if img.Size() != 64<<20+1024 {
			t.Fatalf("size after resize = %d", img.Size())
		}
		ref = append(ref, make([]byte, img.Size()-int64(len(ref)))...)
		tail := randBytes(9, 3*cs+17)
		off := img.Size() - int64(len(tail))
		mustWrite(t, img, tail, off)
		copy(ref[off:], tail)
		mustWrite(t, img, fill(0x5a, 777), 1<<20-100) // across the old end
		copy(ref[1<<20-100:], fill(0x5a, 777))
		mustClose(t, img)
		qemuCheck(t, p)
		assertSame(t, "after resize", qemuRaw(t, p), ref)
		info := qemuInfo(t, p)
		if info[0].VirtualSize != 64<<20+1024 {
			t.Fatalf("qemu-img info virtual size %d", info[0].VirtualSize)
		}
	}
}

func TestResizeQemuImage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "q.qcow2")
	runTool(t, "qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=4096", p, "2M")
	qemuIO(t, p, "qcow2", "write -P 0x11 0 2M")
	img, err := Open(p, OpenOptions{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Resize(600 << 20); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, img, fill(0x22, 8192), 500<<20)
	mustClose(t, img)
	qemuCheck(t, p)
	qemuIO(t, p, "qcow2", "read -P 0x11 0 2M", "read -P 0x22 500M 8k", "read -P 0 2M 100M")
}

func TestReadOnlyAndClosed(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ro.qcow2")
	mustClose(t, mustCreate(t, p, CreateOptions{Size: 1 << 20}))
	img := openRO(t, p)
	if _, err := img.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to read-only image: %v", err)
	}
	if err := img.Resize(2 << 20); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("resize read-only image: %v", err)
	}
	img.Close()
	if _, err := img.ReadAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if _, err := Create(p, CreateOptions{Size: 1 << 20}); !errors.Is(err, os.ErrExist) {
		t.Fatalf("create over existing file: %v", err)
	}
}

func TestConcurrentReadsAndWrites(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.qcow2")
	img := mustCreate(t, p, CreateOptions{Size: 8 << 20, ClusterSize: 4096})
	// Each 64 KiB slot holds one repeated byte value at all times, so a
	// reader can check consistency without knowing write order.
	const slot = 64 << 10
	for i := 0; i < 128; i++ {
		mustWrite(t, img, fill(byte(i), slot), int64(i*slot))
	}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(g)))
			buf := make([]byte, slot)
			for i := 0; i < 200; i++ {
				s := r.Intn(128)
				if _, err := img.ReadAt(buf, int64(s*slot)); err != nil {
					errc <- err
					return
				}
				for _, b := range buf {
					if b != buf[0] {
						errc <- fmt.Errorf("slot %d torn read", s)
						return
					}
				}
			}
		}(g)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewSource(42))
		for i := 0; i < 200; i++ {
			s := r.Intn(128)
			if _, err := img.WriteAt(fill(byte(r.Intn(256)), slot), int64(s*slot)); err != nil {
				errc <- err
				return
			}
		}
	}()
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	mustClose(t, img)
	qemuCheck(t, p)
}

func TestEmptyImageGrows(t *testing.T) {
	p := filepath.Join(t.TempDir(), "empty.qcow2")
	img := mustCreate(t, p, CreateOptions{Size: 0, ClusterSize: 512})
	if img.Size() != 0 {
		t.Fatalf("size %d", img.Size())
	}
	if n, err := img.ReadAt(make([]byte, 10), 0); n != 0 || err == nil {
		t.Fatalf("read of empty image: %d, %v", n, err)
	}
	mustClose(t, img)
	qemuCheck(t, p)
	img, err := Open(p, OpenOptions{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Resize(100 << 10); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, img, fill(9, 5000), 50000)
	mustClose(t, img)
	qemuCheck(t, p)
	qemuIO(t, p, "qcow2", "read -P 9 50000 5000", "read -P 0 0 50000")
}

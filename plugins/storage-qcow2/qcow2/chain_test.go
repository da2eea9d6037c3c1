package qcow2

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/sdk"
)

// makeBase creates a base image of the given format with a known pattern
// and returns its path and contents.
func makeBase(t *testing.T, dir, format string, size int64) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	copy(data, randBytes(11, int(size/3)))
	copy(data[size/2:], fill(0x3c, int(size/8)))
	p := filepath.Join(dir, "base."+format)
	if format == FormatRaw {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p, data
	}
	img := mustCreate(t, p, CreateOptions{Size: size, ClusterSize: 4096})
	mustWrite(t, img, data[:size/3], 0)
	mustWrite(t, img, data[size/2:size/2+size/8], size/2)
	mustClose(t, img)
	return p, data
}

func TestOverlayCopyOnWrite(t *testing.T) {
	for _, format := range []string{FormatRaw, FormatQcow2} {
		for _, cs := range []int{512, 65536} {
			t.Run(fmt.Sprintf("%s_cs%d", format, cs), func(t *testing.T) {
				dir := t.TempDir()
				base, want := makeBase(t, dir, format, 6<<20)
				top := filepath.Join(dir, "top.qcow2")
				img := mustCreate(t, top, CreateOptions{BackingFile: filepath.Base(base), BackingFormat: format, ClusterSize: cs})
				if img.Size() != int64(len(want)) {
					t.Fatalf("overlay size %d, want backing size %d", img.Size(), len(want))
				}
				assertSame(t, "fresh overlay", readAll(t, img), want)
				// Partial-cluster writes over backing data.
				randomWrites(t, img, want, int64(cs), 50, 3*cs)
				assertSame(t, "overlay after writes", readAll(t, img), want)
				// Grow past the backing file: new space reads as zeros.
				if err := img.Resize(8 << 20); err != nil {
					t.Fatal(err)
				}
				want = append(want, make([]byte, 2<<20)...)
				mustWrite(t, img, fill(0x44, 1000), 7<<20)
				copy(want[7<<20:], fill(0x44, 1000))
				mustClose(t, img)

				qemuCheck(t, top)
				assertSame(t, "qemu view of our overlay", qemuRaw(t, top), want)
				qemuIO(t, top, "qcow2", "read -P 0x44 7M 1000", "read -P 0 6M 1M")
				// The backing file is untouched.
				if format == FormatRaw {
					b, _ := os.ReadFile(base)
					if len(b) != 6<<20 {
						t.Fatalf("backing file size changed to %d", len(b))
					}
				} else {
					qemuCheck(t, base)
				}
			})
		}
	}
}

func TestOverlayOnQemuImages(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "qbase.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "16M")
	qemuIO(t, base, "qcow2", "write -P 0x5a 0 4M", "write -z 1M 64k")
	mid := filepath.Join(dir, "qmid.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "qbase.qcow2", "-F", "qcow2", mid)
	qemuIO(t, mid, "qcow2", "write -P 0x6b 2M 100k")
	top := filepath.Join(dir, "top.qcow2")
	img := mustCreate(t, top, CreateOptions{BackingFile: mid, BackingFormat: "qcow2"})
	mustWrite(t, img, fill(0x7c, 5000), 2<<20+50000) // straddles mid's data and base's
	mustClose(t, img)
	qemuCheck(t, top)
	qemuIO(t, top, "qcow2",
		"read -P 0x5a 0 1M", "read -P 0 1M 64k", "read -P 0x6b 2M 50000",
		"read -P 0x7c 2147152 5000", "read -P 0x6b 2152152 47400", "read -P 0x5a 2199552 1994752")
	assertSame(t, "three-layer chain", readAll(t, openRO(t, top)), qemuRaw(t, top))
}

func TestInfoMatchesQemu(t *testing.T) {
	dir := t.TempDir()
	makeBase(t, dir, FormatRaw, 3<<20)
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	mid := filepath.Join(sub, "mid.qcow2")
	// Relative to mid's directory, not the working directory.
	mustClose(t, mustCreate(t, mid, CreateOptions{BackingFile: "../base.raw", BackingFormat: "raw", Size: 4 << 20}))
	top := filepath.Join(dir, "top.qcow2")
	mustClose(t, mustCreate(t, top, CreateOptions{BackingFile: "sub/mid.qcow2", BackingFormat: "qcow2", ClusterSize: 8192}))

	info, err := Info(top)
	if err != nil {
		t.Fatal(err)
	}
	q := qemuInfo(t, top)
	ours := append([]LayerInfo{info.LayerInfo}, info.BackingChain...)
	if len(ours) != len(q) {
		t.Fatalf("chain length %d, qemu says %d", len(ours), len(q))
	}
	for i := range q {
		o := ours[i]
		if o.Path != q[i].Filename || o.Format != q[i].Format || o.VirtualSize != q[i].VirtualSize {
			t.Errorf("layer %d: ours {%s %s %d}, qemu {%s %s %d}", i, o.Path, o.Format, o.VirtualSize, q[i].Filename, q[i].Format, q[i].VirtualSize)
		}
		if o.BackingFile != q[i].BackingFilename || o.BackingFormat != q[i].BackingFormat {
			t.Errorf("layer %d backing: ours %q/%q, qemu %q/%q", i, o.BackingFile, o.BackingFormat, q[i].BackingFilename, q[i].BackingFormat)
		}
		if i+1 < len(q) && ResolveBacking(o.Path, o.BackingFile) != q[i].FullBackingFilename {
			t.Errorf("layer %d full backing: ours %s, qemu %s", i, ResolveBacking(o.Path, o.BackingFile), q[i].FullBackingFilename)
		}
		if q[i].Format == "qcow2" && o.ClusterSize != q[i].ClusterSize {
			t.Errorf("layer %d cluster size %d, qemu %d", i, o.ClusterSize, q[i].ClusterSize)
		}
		if o.ActualSize != q[i].ActualSize {
			t.Errorf("layer %d actual size %d, qemu %d", i, o.ActualSize, q[i].ActualSize)
		}
	}
	if info.VirtualSize != 4<<20 || info.ClusterSize != 8192 {
		t.Errorf("top info %+v", info.LayerInfo)
	}
	// Reading works from another working directory too.
	wd, _ := os.Getwd()
	os.Chdir(sub)
	defer os.Chdir(wd)
	img := openRO(t, top)
	assertSame(t, "chain read", readAll(t, img), qemuRaw(t, top))
}

func TestSetBacking(t *testing.T) {
	dir := t.TempDir()
	baseA, data := makeBase(t, dir, FormatQcow2, 2<<20)
	top := filepath.Join(dir, "top.qcow2")
	img := mustCreate(t, top, CreateOptions{BackingFile: "base.qcow2", BackingFormat: "qcow2"})
	mustWrite(t, img, fill(0x42, 70000), 10)
	copy(data[10:], fill(0x42, 70000))
	mustClose(t, img)

	// Move the base (a snapshot "freeze"), then repoint the overlay.
	frozen := filepath.Join(dir, "frozen-with-a-much-longer-name-than-before.qcow2")
	if err := os.Rename(baseA, frozen); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(top, OpenOptions{}); !errors.Is(err, ErrBackingFile) {
		t.Fatalf("open with missing backing file: %v", err)
	}
	if err := SetBacking(top, filepath.Base(frozen), "qcow2"); err != nil {
		t.Fatal(err)
	}
	q := qemuInfo(t, top)
	if len(q) != 2 || q[0].BackingFilename != filepath.Base(frozen) || q[0].BackingFormat != "qcow2" || q[1].Filename != frozen {
		t.Fatalf("qemu-img info after SetBacking: %+v", q)
	}
	qemuCheck(t, top)
	assertSame(t, "after rebase", readAll(t, openRO(t, top)), data)
	assertSame(t, "qemu after rebase", qemuRaw(t, top), data)

	// Back to a short name, then a raw backing file.
	os.Rename(frozen, filepath.Join(dir, "b"))
	if err := SetBacking(top, "b", "qcow2"); err != nil {
		t.Fatal(err)
	}
	assertSame(t, "short name", qemuRaw(t, top), data)
	rawBase := filepath.Join(dir, "b.raw")
	os.WriteFile(rawBase, qemuRaw(t, filepath.Join(dir, "b")), 0o644)
	if err := SetBacking(top, rawBase, "raw"); err != nil {
		t.Fatal(err)
	}
	assertSame(t, "raw backing", readAll(t, openRO(t, top)), data)
	qemuCheck(t, top)

	// Removing the reference makes the image standalone.
	if err := SetBacking(top, "", ""); err != nil {
		t.Fatal(err)
	}
	q = qemuInfo(t, top)
	if len(q) != 1 || q[0].BackingFilename != "" {
		t.Fatalf("after removing backing: %+v", q)
	}
	qemuCheck(t, top)
	if err := SetBacking(top, "x", "vmdk"); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("bad format: %v", err)
	}
}

func TestBackingChainErrors(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.qcow2")
	b := filepath.Join(dir, "b.qcow2")
	mustClose(t, mustCreate(t, a, CreateOptions{Size: 1 << 20}))
	mustClose(t, mustCreate(t, b, CreateOptions{BackingFile: "a.qcow2", BackingFormat: "qcow2"}))
	// a -> b -> a
	if err := SetBacking(a, "b.qcow2", "qcow2"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(b, OpenOptions{}); !errors.Is(err, ErrBackingFile) {
		t.Fatalf("loop: %v", err)
	}
	if _, err := Info(b); !errors.Is(err, ErrBackingFile) {
		t.Fatalf("Info loop: %v", err)
	}
	if img, err := Open(b, OpenOptions{NoBacking: true}); err != nil {
		t.Fatalf("NoBacking: %v", err)
	} else {
		img.Close()
	}
	if _, err := Create(filepath.Join(dir, "c.qcow2"), CreateOptions{BackingFile: "missing.qcow2"}); !errors.Is(err, ErrBackingFile) {
		t.Fatalf("missing backing: %v", err)
	}
	if _, err := Create(filepath.Join(dir, "d.qcow2"), CreateOptions{BackingFile: "json:{}"}); !errors.Is(err, ErrBackingFile) {
		t.Fatalf("json backing: %v", err)
	}
}

// TestBackingFileNotRegular: a header may name any host file as its
// backing file. Info (what the store's GetDisk runs, as root), Open and
// Create read the named file's header; a FIFO there must not hang them,
// and a device, a directory or a symbolic link must be refused, not read.
func TestBackingFileNotRegular(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "regular.raw")
	if err := os.WriteFile(regular, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.raw")
	if err := os.Symlink(regular, link); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, backing, want string }{
		{"fifo", fifo, "a named pipe (FIFO), not a regular file"},
		{"char-device", "/dev/zero", "a character device, not a regular file"},
		{"directory", dir, "a directory, not a regular file"},
		{"symlink", link, "a symbolic link"},
	}
	// within fails the test if fn does not return promptly (a blocked
	// open never returns; the goroutine is left behind).
	within := func(t *testing.T, what string, fn func() error) error {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- fn() }()
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Second):
			t.Fatalf("%s did not return: it blocks on the backing file", what)
			return nil
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			top := filepath.Join(t.TempDir(), "top.qcow2")
			mustClose(t, mustCreate(t, top, CreateOptions{BackingFile: regular, BackingFormat: FormatRaw}))
			if err := SetBacking(top, c.backing, FormatRaw); err != nil {
				t.Fatal(err)
			}
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, ErrBackingFile) || !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.backing) {
					t.Errorf("%s with backing file %s: %v; want ErrBackingFile (InvalidArgument) naming it and saying %q", what, c.backing, err, c.want)
				}
			}
			check("Info", within(t, "Info", func() error { _, err := Info(top); return err }))
			check("Open", within(t, "Open", func() error {
				img, err := Open(top, OpenOptions{})
				if err == nil {
					img.Close()
				}
				return err
			}))
			check("Create", within(t, "Create", func() error {
				img, err := Create(filepath.Join(t.TempDir(), "new.qcow2"), CreateOptions{BackingFile: c.backing, BackingFormat: FormatRaw})
				if err == nil {
					img.Close()
				}
				return err
			}))
		})
	}
	// The same files as the top image of a conversion keep working where
	// they did (a symlink to a regular file is followed there).
	if info, err := Info(link); err != nil || info.VirtualSize != 1<<20 {
		t.Fatalf("Info of a symlink as the top image: %v %v", info, err)
	}
}

// TestValidateFIFO: Validate's path is untrusted (an import source); a
// FIFO there is refused at once rather than waited on.
func TestValidateFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Validate(fifo, ValidateOptions{}) }()
	select {
	case err := <-done:
		if !isProblem(err, ProblemHeader) || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("Validate of a FIFO: %v; want a problem saying it is not a regular file", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Validate of a FIFO blocks")
	}
}

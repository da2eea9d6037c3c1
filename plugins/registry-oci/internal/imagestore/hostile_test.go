package imagestore_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

// layoutRef writes img as the only image of a fresh OCI layout.
func layoutRef(t *testing.T, img v1.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	if err := ti.WriteLayout(dir, map[string]v1.Image{"": img}); err != nil {
		t.Fatal(err)
	}
	return "oci-layout:" + dir
}

// zeroCounter counts bytes and remembers whether any was not zero.
type zeroCounter struct {
	n       int64
	nonzero bool
}

func (z *zeroCounter) Write(p []byte) (int, error) {
	z.n += int64(len(p))
	if !z.nonzero && len(bytes.Trim(p, "\x00")) > 0 {
		z.nonzero = true
	}
	return len(p), nil
}

// A 1 MB gzip layer holding 1 GiB of zeros: the root disk keeps the file's
// size and content, but the zeros are holes that take no space.
func TestZeroBombRootDiskStaysSparse(t *testing.T) {
	const size = 1 << 30
	bomb := ti.ZeroBomb("zeros", size)
	if n := len(bomb.Blob()); n > 2<<20 {
		t.Fatalf("the bomb layer is %d bytes; the test wants a small one", n)
	}
	img := mustImage(t, []*ti.Layer{
		bomb,
		ti.NewLayer([]ti.Entry{ti.File("etc/hostname", "bomb\n")}, ti.Gzip),
	}, v1.Config{}, "linux/amd64")
	s := openStore(t, imagestore.WithDefaultPlatform(imagestore.Platform{OS: "linux", Architecture: "amd64"}))
	got, err := s.Pull(ctx(t), layoutRef(t, img), imagestore.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rd, err := s.RootDisk(ctx(t), got.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if rd.Size < size {
		t.Errorf("root disk is %d bytes, less than the file it holds", rd.Size)
	}
	if a := ti.Allocated(t, rd.Path); a > 32<<20 {
		t.Errorf("root disk allocates %d MiB on the host for 1 GiB of zeros, want < 32 MiB (zeros must be holes)", a>>20)
	}
	x := ti.OpenExt4(t, rd.Path)
	x.Fsck()
	if st := x.MustStat("/zeros"); st.Size != size {
		t.Errorf("/zeros is %d bytes in the root disk, want %d", st.Size, size)
	}
	var zc zeroCounter
	x.CatTo("/zeros", &zc)
	if zc.n != size || zc.nonzero {
		t.Errorf("/zeros reads back %d bytes (non-zero bytes: %v), want %d zeros", zc.n, zc.nonzero, size)
	}
	if got := x.Cat("/etc/hostname"); got != "bomb\n" {
		t.Errorf("/etc/hostname = %q", got)
	}
}

func wantTooLarge(t *testing.T, err error, parts ...string) {
	t.Helper()
	if !errors.Is(err, imagestore.ErrTooLarge) {
		t.Fatalf("%v, want ErrTooLarge", err)
	}
	mustContain(t, err, append(parts, "max_unpacked_size", `plugin "oci"`)...)
}

// Declared sizes are checked against the limit on unpacked size before
// anything is unpacked: a tiny layer with a PAX sparse entry declaring
// terabytes, a sparse 8 GiB against a small configured limit, and many
// ordinary files in several layers that together exceed it.
func TestUnpackedSizeLimit(t *testing.T) {
	amd64 := imagestore.WithDefaultPlatform(imagestore.Platform{OS: "linux", Architecture: "amd64"})
	sparseImage := func(size int64) (v1.Image, *ti.Layer) {
		l := ti.FromTar(ti.SparseBomb("big", size), ti.Gzip)
		return mustImage(t, []*ti.Layer{l}, v1.Config{}, "linux/amd64"), l
	}

	t.Run("sparse entry over the default", func(t *testing.T) {
		img, l := sparseImage(1 << 40)
		s := openStore(t, amd64)
		_, err := s.Pull(ctx(t), layoutRef(t, img), imagestore.PullOptions{})
		wantTooLarge(t, err, l.MustDigest().String(), `"big"`, "1TiB", "64GiB")
		assertNothingCached(t, s)
	})

	t.Run("sparse entry over a configured limit", func(t *testing.T) {
		img, l := sparseImage(8 << 30)
		s := openStore(t, amd64, imagestore.WithMaxUnpackedSize(1<<30))
		_, err := s.Pull(ctx(t), layoutRef(t, img), imagestore.PullOptions{})
		wantTooLarge(t, err, l.MustDigest().String(), "8.0GiB", "limit of 1GiB")
		assertNothingCached(t, s)
	})

	t.Run("many files in several layers", func(t *testing.T) {
		var layers []*ti.Layer
		for li := 0; li < 3; li++ {
			var es []ti.Entry
			for i := 0; i < 1000; i++ {
				es = append(es, ti.File(fmt.Sprintf("l%d/f%04d", li, i), strings.Repeat("x", 4096)))
			}
			layers = append(layers, ti.NewLayer(es, ti.Gzip))
		}
		img := mustImage(t, layers, v1.Config{}, "linux/amd64")
		// Each layer declares about 4.5 MiB: two fit, the third does not.
		s := openStore(t, amd64, imagestore.WithMaxUnpackedSize(10<<20))
		_, err := s.Pull(ctx(t), layoutRef(t, img), imagestore.PullOptions{})
		wantTooLarge(t, err, "layer 3 of 3", layers[2].MustDigest().String(), "limit of 10MiB")
		if imgs, _ := s.List(); len(imgs) != 0 {
			t.Errorf("an image over the limit was recorded: %v", imgs)
		}
	})

	t.Run("compressed docker archive", func(t *testing.T) {
		img := mustImage(t, []*ti.Layer{ti.NewLayer([]ti.Entry{ti.File("f", strings.Repeat("x", 1<<20))}, ti.Uncompressed)}, v1.Config{}, "linux/amd64")
		plain := filepath.Join(t.TempDir(), "image.tar")
		if err := ti.WriteDockerArchive(plain, map[string]v1.Image{"app:1": img}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(plain)
		if err != nil {
			t.Fatal(err)
		}
		gz := plain + ".gz"
		if err := os.WriteFile(gz, gzipBytes(b), 0o644); err != nil {
			t.Fatal(err)
		}
		s := openStore(t, amd64, imagestore.WithMaxUnpackedSize(512<<10))
		_, err = s.Pull(ctx(t), "docker-archive:"+gz, imagestore.PullOptions{})
		if !errors.Is(err, imagestore.ErrTooLarge) {
			t.Fatalf("%v, want ErrTooLarge", err)
		}
		mustContain(t, err, gz, "decompresses to more than", "max_unpacked_size")
		if fs := files(t, filepath.Join(s.Dir(), "tmp")); len(fs) > 0 {
			t.Errorf("tmp/ holds %v after the refused pull", fs)
		}
		// Under the default it is fine.
		if _, err := openStore(t, amd64).Pull(ctx(t), "docker-archive:"+gz, imagestore.PullOptions{}); err != nil {
			t.Errorf("pull under the default limit: %v", err)
		}
	})

	t.Run("limit lowered after the pull", func(t *testing.T) {
		img, l := sparseImage(8 << 30)
		dir := filepath.Join(t.TempDir(), "cache")
		big, err := imagestore.Open(dir, amd64)
		if err != nil {
			t.Fatal(err)
		}
		got, err := big.Pull(ctx(t), layoutRef(t, img), imagestore.PullOptions{})
		if err != nil {
			t.Fatalf("pull under the default limit: %v", err)
		}
		small, err := imagestore.Open(dir, amd64, imagestore.WithMaxUnpackedSize(1<<30))
		if err != nil {
			t.Fatal(err)
		}
		_, err = small.RootDisk(ctx(t), got.Digest)
		wantTooLarge(t, err, l.MustDigest().String())
		if fs := files(t, filepath.Join(dir, "rootfs")); len(fs) > 0 {
			t.Errorf("rootfs/ holds %v after a refused build", fs)
		}
	})
}

// mountTmpfs mounts a size-limited tmpfs on a fresh directory for the
// test, or skips the test where mounting is not permitted.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Skipf("skipped: this test needs a small file system and cannot mount a tmpfs here (%v: %s); run it as root", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// A root disk that does not fit on the cache's file system fails with a
// clear error and leaves neither a partial disk nor a temp file behind.
func TestFullDiskDuringRootDiskBuild(t *testing.T) {
	fsDir := mountTmpfs(t, "20m")
	// 30 MiB of data that is not zeros (so no holes) but compresses to
	// almost nothing, so the pull fits and the build does not.
	data := bytes.Repeat([]byte("not zero "), 30<<20/9)
	img := mustImage(t, []*ti.Layer{
		ti.NewLayer([]ti.Entry{ti.File("big", string(data))}, ti.Gzip),
	}, v1.Config{}, "linux/amd64")
	ref := layoutRef(t, img)
	cache := filepath.Join(fsDir, "cache")
	s, err := imagestore.Open(cache, imagestore.WithDefaultPlatform(imagestore.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
	if err != nil {
		t.Fatalf("pull onto the small file system: %v", err)
	}
	before := freeBytes(t, fsDir)

	_, err = s.RootDisk(ctx(t), got.Digest)
	if !errors.Is(err, imagestore.ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) && !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("build on a full file system: %v, want ErrNoSpace", err)
	}
	mustContain(t, err, "no space left on device while building the root disk of", got.Digest,
		filepath.Join(cache, "rootfs", "v1"), "free space", "image prune")
	for _, sub := range []string{"tmp", "rootfs"} {
		if fs := files(t, filepath.Join(cache, sub)); len(fs) > 0 {
			t.Errorf("%s/ holds %v after the failed build", sub, fs)
		}
	}
	if after := freeBytes(t, fsDir); after < before {
		t.Errorf("the failed build kept %d bytes of the file system", before-after)
	}
	// The cache still works: the image is there for a retry.
	if _, err := s.Image(got.Digest); err != nil {
		t.Errorf("image after the failed build: %v", err)
	}
}

// Images no box can run are refused at pull, before their layers are
// downloaded.
func TestNonLinuxAndEmptyImagesRefused(t *testing.T) {
	layer := ti.NewLayer([]ti.Entry{ti.File("f", "x")}, ti.Gzip)
	windows := mustImage(t, []*ti.Layer{layer}, v1.Config{}, "windows/amd64")
	noLayers := mustImage(t, nil, v1.Config{}, "linux/amd64")
	for name, tc := range map[string]struct {
		img      v1.Image
		platform string
		parts    []string
	}{
		"windows image":               {windows, "", []string{"windows/amd64", "Linux guests", "--platform linux/amd64"}},
		"windows image, as asked for": {windows, "windows/amd64", []string{"windows/amd64", "Linux guests"}},
		"no layers":                   {noLayers, "", []string{"has no layers", "root file system"}},
	} {
		t.Run(name, func(t *testing.T) {
			s := openStore(t, imagestore.WithDefaultPlatform(imagestore.Platform{OS: "linux", Architecture: "amd64"}))
			_, err := s.Pull(ctx(t), layoutRef(t, tc.img), imagestore.PullOptions{Platform: tc.platform})
			if !errors.Is(err, imagestore.ErrBadImage) {
				t.Fatalf("%v, want ErrBadImage", err)
			}
			mustContain(t, err, tc.parts...)
			assertNothingCached(t, s, layer.MustDigest())
		})
	}
}

// A FIFO (or other special file) where an OCI layout has a blob, its index
// or its marker is refused at once, naming it, instead of hanging the pull
// in open(2) until its call timeout.
func TestSpecialFilesInLayoutRefused(t *testing.T) {
	l := ti.NewLayer([]ti.Entry{ti.File("f", "x")}, ti.Gzip)
	img := mustImage(t, []*ti.Layer{l}, v1.Config{}, "linux/amd64")
	manifest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		file  func(dir string) string
		parts []string
	}{
		"layer blob is a FIFO": {func(dir string) string {
			return filepath.Join(dir, "blobs", "sha256", l.MustDigest().Hex)
		}, []string{"blob " + l.MustDigest().String(), "named pipe"}},
		"manifest blob is a FIFO": {func(dir string) string {
			return filepath.Join(dir, "blobs", "sha256", manifest.Hex)
		}, []string{"blob " + manifest.String(), "named pipe"}},
		"index.json is a FIFO": {func(dir string) string { return filepath.Join(dir, "index.json") }, []string{"index.json", "named pipe"}},
		"oci-layout is a FIFO": {func(dir string) string { return filepath.Join(dir, "oci-layout") }, []string{"oci-layout marker", "named pipe"}},
		"layer blob is a device": {func(dir string) string {
			return filepath.Join(dir, "blobs", "sha256", l.MustDigest().Hex)
		}, []string{"blob " + l.MustDigest().String(), "character device"}},
	} {
		t.Run(name, func(t *testing.T) {
			ref := layoutRef(t, img)
			path := tc.file(strings.TrimPrefix(ref, "oci-layout:"))
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(name, "device") {
				if err := os.Symlink("/dev/zero", path); err != nil {
					t.Fatal(err)
				}
			} else if err := syscall.Mkfifo(path, 0o644); err != nil {
				t.Fatal(err)
			}
			s := openStore(t)
			done := make(chan error, 1)
			go func() {
				_, err := s.Pull(ctx(t), ref, imagestore.PullOptions{Platform: "linux/amd64"})
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, imagestore.ErrBadImage) {
					t.Fatalf("%v, want ErrBadImage", err)
				}
				mustContain(t, err, append(tc.parts, "not a regular file")...)
			case <-time.After(30 * time.Second):
				t.Fatal("the pull hung on a special file in the layout")
			}
			assertNothingCached(t, s, l.MustDigest())
		})
	}
}

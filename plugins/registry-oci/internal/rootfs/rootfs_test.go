package rootfs_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/rootfs"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

// Enough xattrs of mixed indexes and name lengths to spill out of the inode
// into an external block, in a combination where tar2ext4's comparator
// (not a strict ordering) leaves the block unsorted.
var manyXattrs = func() map[string]string {
	m := map[string]string{}
	for _, n := range strings.Fields(`security.iii security.l security.p security.q security.s
		trusted.ee trusted.f trusted.hh trusted.i trusted.iii trusted.kk trusted.ppp trusted.ss
		user.f user.fff user.hhh user.n user.pp user.q user.rr user.tt`) {
		m[n] = strings.Repeat(n[len(n)-1:], 20)
	}
	m["user.long"] = strings.Repeat("L", 300)
	return m
}()

func buildTar(t *testing.T, tarball []byte) string {
	t.Helper()
	return build(t, func(ctx context.Context, w io.Writer) error {
		_, err := w.Write(tarball)
		return err
	})
}

// build writes the tar stream that write produces as an ext4 image in a
// temp dir and returns its path.
func build(t *testing.T, write func(ctx context.Context, w io.Writer) error) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fs.ext4")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := rootfs.Build(context.Background(), f, write, rootfs.Options{}); err != nil {
		t.Fatalf("build: %v", err)
	}
	return path
}

func TestXattrBlockIsSortedForTheKernel(t *testing.T) {
	path := buildTar(t, ti.Tar([]ti.Entry{ti.File("f", "data").WithXattrs(manyXattrs)}))
	x := ti.OpenExt4(t, path)
	x.Fsck()
	s := x.MustStat("/f")
	for k, v := range manyXattrs {
		if s.Xattrs[k] != v {
			t.Errorf("xattr %s = %q, want %q", k, s.Xattrs[k], v)
		}
	}
	if s.FileACL == 0 {
		t.Fatal("expected an external xattr block; the test no longer exercises the fix")
	}
	blk := make([]byte, 4096)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(blk, s.FileACL*4096); err != nil {
		t.Fatal(err)
	}
	type key struct {
		idx  byte
		name string
	}
	var keys []key
	for pos := 32; binary.LittleEndian.Uint32(blk[pos:]) != 0; {
		n := int(blk[pos])
		keys = append(keys, key{blk[pos+1], string(blk[pos+16 : pos+16+n])})
		pos += (16 + n + 3) &^ 3
	}
	ok := sort.SliceIsSorted(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.idx != b.idx {
			return a.idx < b.idx
		}
		if len(a.name) != len(b.name) {
			return len(a.name) < len(b.name)
		}
		return a.name < b.name
	})
	if !ok {
		t.Errorf("xattr block entries not sorted by (index, length, name): %v", keys)
	}
}

func TestEmptyRootAndFsck(t *testing.T) {
	path := buildTar(t, ti.Tar(nil))
	x := ti.OpenExt4(t, path)
	x.Fsck()
	if got := x.Names("/"); fmt.Sprint(got) != "[lost+found]" {
		t.Errorf("root holds %v", got)
	}
}

func TestManyFilesFsck(t *testing.T) {
	// Several block groups' worth of inodes and a large directory.
	var es []ti.Entry
	for i := 0; i < 40000; i++ {
		es = append(es, ti.File(fmt.Sprintf("d%02d/f%05d", i%50, i), fmt.Sprint(i)))
	}
	path := buildTar(t, ti.Tar(es))
	x := ti.OpenExt4(t, path)
	x.Fsck()
	if got := x.Cat("/d07/f12357"); got != "12357" {
		t.Errorf("content %q", got)
	}
	if n := len(x.Names("/d13")); n != 800 {
		t.Errorf("/d13 has %d entries, want 800", n)
	}
}

// TestKernelMount mounts the image with the real ext4 driver (root and a
// loop device needed; skipped otherwise) and reads files and xattrs back
// through the kernel, which is stricter than debugfs about xattr order.
func TestKernelMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting an ext4 image needs root")
	}
	path := buildTar(t, ti.Tar([]ti.Entry{
		ti.File("f", "data").WithXattrs(manyXattrs),
		ti.CharDev("null", 1, 3),
		ti.File("sub/g", "gg").With(0o4750, 12, 34),
		ti.Hardlink("sub/h", "sub/g"),
		ti.File("zeros", strings.Repeat("\x00", 1<<20)+"end"), // its zeros are holes in the image
	}))
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop,ro", "-t", "ext4", path, mnt).CombinedOutput(); err != nil {
		t.Skipf("skipped: cannot loop-mount here (%v: %s)", err, bytes.TrimSpace(out))
	}
	defer exec.Command("umount", mnt).Run()
	for k, v := range manyXattrs {
		buf := make([]byte, 4096)
		n, err := unix.Getxattr(filepath.Join(mnt, "f"), k, buf)
		if err != nil {
			t.Errorf("kernel getxattr %s: %v", k, err)
			continue
		}
		if string(buf[:n]) != v {
			t.Errorf("kernel getxattr %s = %q, want %q", k, buf[:n], v)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(mnt, "sub/g"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o4750 || st.Uid != 12 || st.Gid != 34 || st.Nlink != 2 {
		t.Errorf("sub/g: mode %#o uid %d gid %d nlink %d", st.Mode&0o7777, st.Uid, st.Gid, st.Nlink)
	}
	if err := unix.Stat(filepath.Join(mnt, "null"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("null: %+v %v", st, err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "sub/h")); err != nil || string(b) != "gg" {
		t.Errorf("sub/h: %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "zeros")); err != nil || string(b) != strings.Repeat("\x00", 1<<20)+"end" {
		t.Errorf("zeros: %d bytes, %v", len(b), err)
	}
}

package agent_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/boxctl/boxctl/guest/agent"
	"github.com/boxctl/boxctl/test/images/busybox"
)

// overlayBox mounts a real overlayfs as the agent does in the guest: a busybox image tree
// (with a few extra files) as the read-only lower layer, an upper and a work directory.
// It returns the merged root and the upper directory.
func overlayBox(t *testing.T) (root, upper string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting an overlay needs root (as the agent has in the guest)")
	}
	dir := t.TempDir()
	lower, upper, work, root := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "root")
	if err := busybox.WriteRootfs(lower, busybox.Options{}); err != nil {
		t.Fatalf("busybox rootfs (install busybox-static): %v", err)
	}
	for p, content := range map[string]string{
		"gone.txt":         "in the image\n",
		"data/old-1":       "old\n",
		"data/old-2":       "old\n",
		"keep/unchanged":   "same\n",
		"etc/image-config": "image\n",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(lower, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(lower, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{upper, work, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(root, 0); err != nil {
			_ = unix.Unmount(root, unix.MNT_DETACH)
			t.Errorf("unmount overlay: %v", err)
		}
	})
	return root, upper
}

type layerEntry struct {
	hdr  *tar.Header
	data string
}

func readLayer(t *testing.T, b []byte) (map[string]layerEntry, []string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	entries := map[string]layerEntry{}
	var order []string
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return entries, order
		}
		if err != nil {
			t.Fatalf("the diff is not a valid tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := entries[hdr.Name]; dup {
			t.Errorf("entry %s twice", hdr.Name)
		}
		entries[hdr.Name] = layerEntry{hdr: hdr, data: string(data)}
		order = append(order, hdr.Name)
	}
}

func TestDiffIsAnOCILayerOfTheUpperDirectory(t *testing.T) {
	root, upper := overlayBox(t)
	f := newFixture(t, func(c *agent.Config) {
		c.Root, c.UpperDir = root, upper
		c.Generated = []string{"/etc/hostname"}
	})
	r := f.run(t, sh(`set -e
		echo new > /new.txt && chmod 0640 /new.txt && chown 1000:50 /new.txt
		ln /new.txt /new.txt.link
		ln -s /new.txt /new-symlink
		rm /gone.txt
		rm -rf /data && mkdir /data && echo fresh > /data/fresh
		mkfifo /fifo
		echo changed >> /etc/image-config
		echo box > /etc/hostname
	`), nil)
	if r.err != nil || r.ExitCode != 0 {
		t.Fatalf("changing the box: %+v %s", r, r.stderr)
	}
	if err := unix.Setxattr(filepath.Join(root, "new.txt"), "user.note", []byte("kept"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	mtime := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(root, "new.txt"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	// A socket has no place in a layer.
	l, err := net.Listen("unix", filepath.Join(root, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	var buf bytes.Buffer
	n, err := f.client.Diff(ctxT(t), &buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Errorf("Diff reported %d bytes, wrote %d", n, buf.Len())
	}
	entries, order := readLayer(t, buf.Bytes())
	t.Logf("layer entries: %v", order)

	want := func(name string, typ byte) layerEntry {
		t.Helper()
		e, ok := entries[name]
		if !ok {
			t.Fatalf("no %s in the layer (entries: %v)", name, order)
		}
		if e.hdr.Typeflag != typ {
			t.Errorf("%s: type %q, want %q", name, e.hdr.Typeflag, typ)
		}
		return e
	}
	nf := want("new.txt", tar.TypeReg)
	if nf.data != "new\n" || nf.hdr.Mode != 0o640 || nf.hdr.Uid != 1000 || nf.hdr.Gid != 50 || !nf.hdr.ModTime.Equal(mtime) {
		t.Errorf("new.txt: %q mode %o owner %d:%d mtime %s", nf.data, nf.hdr.Mode, nf.hdr.Uid, nf.hdr.Gid, nf.hdr.ModTime)
	}
	if got := nf.hdr.PAXRecords["SCHILY.xattr.user.note"]; got != "kept" {
		t.Errorf("new.txt: xattr user.note = %q, want kept (records %v)", got, nf.hdr.PAXRecords)
	}
	if l := want("new.txt.link", tar.TypeLink); l.hdr.Linkname != "new.txt" {
		t.Errorf("hard link to %q, want new.txt", l.hdr.Linkname)
	}
	if l := want("new-symlink", tar.TypeSymlink); l.hdr.Linkname != "/new.txt" {
		t.Errorf("symlink to %q", l.hdr.Linkname)
	}
	if wh := want(".wh.gone.txt", tar.TypeReg); wh.hdr.Size != 0 {
		t.Errorf("whiteout has %d bytes", wh.hdr.Size)
	}
	want("data/", tar.TypeDir)
	want("data/.wh..wh..opq", tar.TypeReg)
	if e := want("data/fresh", tar.TypeReg); e.data != "fresh\n" {
		t.Errorf("data/fresh = %q", e.data)
	}
	want("fifo", tar.TypeFifo)
	if e := want("etc/image-config", tar.TypeReg); e.data != "image\nchanged\n" {
		t.Errorf("etc/image-config = %q", e.data)
	}
	want("etc/", tar.TypeDir)
	for _, name := range []string{"etc/hostname", "gone.txt", "data/old-1", "keep/", "keep/unchanged", "./", "/", "sock"} {
		if _, ok := entries[name]; ok {
			t.Errorf("the layer has %s; it must not", name)
		}
	}
	index := map[string]int{}
	for i, name := range order {
		index[name] = i
		for k := range entries[name].hdr.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.trusted.overlay.") {
				t.Errorf("%s carries overlayfs's own xattr %s", name, k)
			}
		}
		if strings.HasPrefix(name, "/") || slices.Contains(strings.Split(name, "/"), "..") {
			t.Errorf("entry name %q is not relative", name)
		}
	}
	if !(index["data/"] < index["data/.wh..wh..opq"] && index["data/.wh..wh..opq"] < index["data/fresh"]) {
		t.Errorf("the opaque marker must follow its directory and precede its contents: %v", order)
	}
	if index["new.txt"] > index["new.txt.link"] {
		t.Errorf("the hard link precedes its target: %v", order)
	}
}

func TestDiffNeedsAnUpperDirectoryAndAMountedRoot(t *testing.T) {
	f := newFixture(t, nil)
	if _, err := f.client.Diff(ctxT(t), io.Discard); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("diff without an upper directory: %v; want FailedPrecondition", err)
	}
	f = newFixture(t, func(c *agent.Config) {
		c.UpperDir = t.TempDir()
		c.RootState = func() agent.RootState { return agent.RootState{Err: errors.New("mount overlay: no such device")} }
	})
	if _, err := f.client.Diff(ctxT(t), io.Discard); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("diff without a mounted root: %v; want FailedPrecondition", err)
	}
}

// An upper directory that uses overlayfs features with no OCI form is refused, not
// turned into a layer that silently loses the change.
func TestDiffRefusesRedirectedDirectories(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("trusted.* xattrs need root")
	}
	upper := t.TempDir()
	if err := os.Mkdir(filepath.Join(upper, "moved"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(upper, "moved"), "trusted.overlay.redirect", []byte("/orig"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	f := newFixture(t, func(c *agent.Config) { c.UpperDir = upper })
	_, err := f.client.Diff(ctxT(t), io.Discard)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "redirect_dir") {
		t.Errorf("diff of a redirected directory: %v; want FailedPrecondition naming redirect_dir", err)
	}
}

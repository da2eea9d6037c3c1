package flatten_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/flatten"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/layer"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/rootfs"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

func stack(t *testing.T, ls ...*ti.Layer) []flatten.Layer {
	t.Helper()
	var out []flatten.Layer
	for _, l := range ls {
		x, err := layer.Scan(bytes.NewReader(l.Blob()), l.MustDigest(), 0)
		if err != nil {
			t.Fatalf("scan: %v", err)
		}
		b := l.Blob()
		out = append(out, flatten.Layer{Digest: l.MustDigest(), Index: x, Open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}})
	}
	return out
}

func build(t *testing.T, layers []flatten.Layer) *ti.Ext4 {
	t.Helper()
	p, err := flatten.NewPlan(layers)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	path := filepath.Join(t.TempDir(), "root.ext4")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := rootfs.Build(context.Background(), f, p.WriteTar, rootfs.Options{}); err != nil {
		t.Fatalf("build: %v", err)
	}
	x := ti.OpenExt4(t, path)
	x.Fsck()
	return x
}

const longTarget = "/usr/share/zoneinfo/some/very/long/path/that/does/not/fit/in/the/inode/UTC"

// Layers exercising every rule of the changeset format.
func scenario() []*ti.Layer {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	l1 := ti.NewLayer([]ti.Entry{
		ti.Dir("etc"),
		ti.File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
		ti.File("etc/hostname", "base"),
		ti.Symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
		ti.Symlink("etc/longlink", longTarget),
		ti.Dir("usr"), ti.Dir("usr/bin"),
		ti.File("usr/bin/tool", "tool-v1").With(0o755, 0, 0),
		ti.File("usr/bin/su", "su").With(0o4755, 0, 0),
		ti.File("usr/bin/ping", "ping").With(0o755, 0, 0).WithXattrs(map[string]string{
			"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
			"user.note":           "hello",
		}),
		ti.Dir("opt"), ti.File("opt/a", "a"), ti.File("opt/sub/b", "b"),
		ti.Dir("data"), ti.File("data/keep", "keep"), ti.File("data/gone", "gone"),
		ti.File("bin/busybox", "BUSYBOX").With(0o755, 0, 0),
		ti.Hardlink("bin/sh", "bin/busybox"),
		ti.File("lib/libc.so", "libc"),
		ti.Dir("tmp").With(0o1777, 0, 0),
		ti.CharDev("dev/null", 1, 3),
		ti.Fifo("run/fifo"),
		ti.Dir("home/user").With(0o750, 1000, 1000),
		ti.File("home/user/.profile", "export A=1\n").With(0o600, 1000, 1000),
		{Name: "big", Type: tar.TypeReg, Mode: 0o644, Data: big},
	}, ti.Gzip)
	l2 := ti.NewLayer([]ti.Entry{
		ti.Whiteout("data/gone"),
		ti.Dir("opt").With(0o700, 0, 0),
		ti.Opaque("opt"),
		ti.File("opt/c", "c"),
		ti.File("usr/bin/tool", "tool-v2").With(0o755, 0, 0),
		ti.Hardlink("usr/bin/tool-link", "lib/libc.so"),
		ti.Hardlink("usr/bin/sh2", "bin/busybox"),
		ti.Whiteout("etc/hostname"),
		ti.File("etc/hostname", "new"),
		ti.Dir("etc").With(0o750, 0, 0),
		ti.File("/abs/path", "absolute"),
		ti.Dir("usr/lib"),
		ti.Symlink("lib64", "usr/lib"),
	}, ti.Zstd)
	l3 := ti.NewLayer([]ti.Entry{
		ti.File("lib64/libz.so", "z"),
		ti.Whiteout("lib/libc.so"),
		ti.File("bin/busybox", "BUSYBOX2").With(0o755, 0, 0),
		ti.Hardlink("data/keep2", "data/keep"),
		ti.Whiteout("home"),
		ti.File("home/other/x", "x"),
	}, ti.Uncompressed)
	return []*ti.Layer{l1, l2, l3}
}

func TestFlattenSemantics(t *testing.T) {
	x := build(t, stack(t, scenario()...))

	type want struct {
		typ   string
		mode  uint32
		uid   int
		data  string
		links int
	}
	checks := map[string]want{
		"/etc":               {typ: "directory", mode: 0o750},
		"/etc/passwd":        {typ: "regular", mode: 0o644, data: "root:x:0:0:root:/root:/bin/sh\n", links: 1},
		"/etc/hostname":      {typ: "regular", mode: 0o644, data: "new", links: 1},
		"/opt":               {typ: "directory", mode: 0o700},
		"/opt/c":             {typ: "regular", mode: 0o644, data: "c"},
		"/usr/bin/tool":      {typ: "regular", mode: 0o755, data: "tool-v2", links: 1},
		"/usr/bin/tool-link": {typ: "regular", data: "libc", links: 1, mode: 0o644},
		"/usr/bin/su":        {typ: "regular", mode: 0o4755, data: "su"},
		"/bin/busybox":       {typ: "regular", mode: 0o755, data: "BUSYBOX2", links: 1},
		"/bin/sh":            {typ: "regular", mode: 0o755, data: "BUSYBOX", links: 2},
		"/usr/bin/sh2":       {typ: "regular", mode: 0o755, data: "BUSYBOX", links: 2},
		"/data/keep":         {typ: "regular", data: "keep", links: 2, mode: 0o644},
		"/data/keep2":        {typ: "regular", data: "keep", links: 2, mode: 0o644},
		"/usr/lib/libz.so":   {typ: "regular", data: "z", mode: 0o644},
		"/abs/path":          {typ: "regular", data: "absolute", mode: 0o644},
		"/tmp":               {typ: "directory", mode: 0o1777},
		"/dev/null":          {typ: "character special", mode: 0o666},
		"/run/fifo":          {typ: "FIFO", mode: 0o644},
		"/lib64":             {typ: "symlink", mode: 0o777},
		"/home/other/x":      {typ: "regular", data: "x", mode: 0o644},
	}
	for p, w := range checks {
		s := x.MustStat(p)
		if s.Type != w.typ {
			t.Errorf("%s: type %q, want %q", p, s.Type, w.typ)
		}
		if s.Mode != w.mode {
			t.Errorf("%s: mode %#o, want %#o", p, s.Mode, w.mode)
		}
		if s.Uid != w.uid {
			t.Errorf("%s: uid %d, want %d", p, s.Uid, w.uid)
		}
		if w.links != 0 && s.Links != w.links {
			t.Errorf("%s: %d links, want %d", p, s.Links, w.links)
		}
		if w.data != "" {
			if got := x.Cat(p); got != w.data {
				t.Errorf("%s: content %q, want %q", p, got, w.data)
			}
		}
		if s.Mtime != ti.Epoch.Unix() {
			t.Errorf("%s: mtime %d, want %d", p, s.Mtime, ti.Epoch.Unix())
		}
	}
	for _, gone := range []string{"/data/gone", "/opt/a", "/opt/sub", "/lib/libc.so", "/home/user", "/lib64/libz.so/x"} {
		if _, ok := x.Stat(gone); ok {
			t.Errorf("%s exists, want deleted", gone)
		}
	}
	// Hardlinks share an inode; the replaced file got a new one.
	if a, b := x.MustStat("/bin/sh"), x.MustStat("/usr/bin/sh2"); a.Inode != b.Inode {
		t.Errorf("/bin/sh and /usr/bin/sh2 are inodes %d and %d, want one", a.Inode, b.Inode)
	}
	if a, b := x.MustStat("/bin/sh"), x.MustStat("/bin/busybox"); a.Inode == b.Inode {
		t.Errorf("/bin/busybox was replaced but still shares inode %d with /bin/sh", a.Inode)
	}
	if got := x.Names("/opt"); strings.Join(got, ",") != "c" {
		t.Errorf("/opt holds %v, want only c (opaque)", got)
	}
	if s := x.MustStat("/dev/null"); s.Major != 1 || s.Minor != 3 {
		t.Errorf("/dev/null is %d:%d, want 1:3", s.Major, s.Minor)
	}
	if s := x.MustStat("/etc/localtime"); s.LinkTarget != "/usr/share/zoneinfo/UTC" {
		t.Errorf("/etc/localtime -> %q", s.LinkTarget)
	}
	if s := x.MustStat("/etc/longlink"); s.Type != "symlink" || s.Size != int64(len(longTarget)) {
		t.Errorf("/etc/longlink: %+v", s)
	}
	if s := x.MustStat("/lib64"); s.LinkTarget != "usr/lib" {
		t.Errorf("/lib64 -> %q", s.LinkTarget)
	}
	ping := x.MustStat("/usr/bin/ping")
	if ping.Xattrs["user.note"] != "hello" {
		t.Errorf("ping xattrs %v, want user.note=hello", ping.Xattrs)
	}
	if c := ping.Xattrs["security.capability"]; !strings.HasPrefix(c, "01 00 00 02 00 20") {
		t.Errorf("ping security.capability = %q", c)
	}
	if got := x.Cat("/big"); len(got) != 1<<20 || got[:16] != "0123456789abcdef" {
		t.Errorf("/big: %d bytes", len(got))
	}
}

func TestOwnersAndImplicitParents(t *testing.T) {
	l := ti.NewLayer([]ti.Entry{
		ti.Dir("./").With(0o700, 0, 0),
		ti.File("a/b/c/file", "f").With(0o640, 1000, 1001),
		ti.Dir("home/u").With(0o700, 1000, 1000),
		ti.File("home/u/.profile", "p").With(0o600, 1000, 1000),
		ti.File("big-id", "x").With(0o644, 100000, 200000),
	}, ti.Gzip)
	x := build(t, stack(t, l))
	for p, w := range map[string][3]int{
		"/a/b/c/file":      {0o640, 1000, 1001},
		"/a/b":             {0o755, 0, 0},
		"/home/u":          {0o700, 1000, 1000},
		"/home/u/.profile": {0o600, 1000, 1000},
		"/big-id":          {0o644, 100000, 200000},
		"/":                {0o700, 0, 0},
	} {
		s := x.MustStat(p)
		if int(s.Mode) != w[0] || s.Uid != w[1] || s.Gid != w[2] {
			t.Errorf("%s: mode %#o uid %d gid %d, want %#o %d %d", p, s.Mode, s.Uid, s.Gid, w[0], w[1], w[2])
		}
	}
}

func TestLinkTargetDeletedKeepsContent(t *testing.T) {
	// The link is made in the same layer as its target; the target is then
	// deleted above: the link must keep the content under its own name.
	l1 := ti.NewLayer([]ti.Entry{ti.File("a", "AAA"), ti.Hardlink("b", "a"), ti.Hardlink("c", "a")}, ti.Gzip)
	l2 := ti.NewLayer([]ti.Entry{ti.Whiteout("a")}, ti.Gzip)
	x := build(t, stack(t, l1, l2))
	if _, ok := x.Stat("/a"); ok {
		t.Error("/a survived its whiteout")
	}
	for _, p := range []string{"/b", "/c"} {
		if got := x.Cat(p); got != "AAA" {
			t.Errorf("%s = %q, want AAA", p, got)
		}
		if s := x.MustStat(p); s.Links != 2 {
			t.Errorf("%s has %d links, want 2", p, s.Links)
		}
	}
}

func TestWhiteoutOnlyAffectsLowerLayers(t *testing.T) {
	// A layer that creates x and also whites out x keeps its own x.
	l1 := ti.NewLayer([]ti.Entry{ti.File("x", "old"), ti.File("d/y", "old-y")}, ti.Gzip)
	l2 := ti.NewLayer([]ti.Entry{ti.File("x", "new"), ti.Whiteout("x"), ti.File("d/z", "z"), ti.Opaque("d")}, ti.Gzip)
	x := build(t, stack(t, l1, l2))
	if got := x.Cat("/x"); got != "new" {
		t.Errorf("/x = %q, want new", got)
	}
	if got := strings.Join(x.Names("/d"), ","); got != "z" {
		t.Errorf("/d holds %s, want z", got)
	}
}

func TestFileReplacesDirectory(t *testing.T) {
	l1 := ti.NewLayer([]ti.Entry{ti.File("p/q/r", "r"), ti.File("f", "file")}, ti.Gzip)
	l2 := ti.NewLayer([]ti.Entry{ti.File("p", "now a file"), ti.Dir("f"), ti.File("f/inner", "dir now")}, ti.Gzip)
	x := build(t, stack(t, l1, l2))
	if s := x.MustStat("/p"); s.Type != "regular" {
		t.Errorf("/p is a %s", s.Type)
	}
	if _, ok := x.Stat("/p/q"); ok {
		t.Error("/p/q survived")
	}
	if got := x.Cat("/f/inner"); got != "dir now" {
		t.Errorf("/f/inner = %q", got)
	}
}

func TestBadLayers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layers []*ti.Layer
		want   string
	}{
		{"hardlink to missing target", []*ti.Layer{ti.NewLayer([]ti.Entry{ti.Hardlink("a", "nope")}, ti.Gzip)}, `hardlink to missing target "nope"`},
		{"hardlink target deleted below", []*ti.Layer{
			ti.NewLayer([]ti.Entry{ti.File("t", "t")}, ti.Gzip),
			ti.NewLayer([]ti.Entry{ti.Whiteout("t"), ti.Hardlink("l", "t")}, ti.Gzip),
		}, "hardlink to missing target"},
		{"parent is a file", []*ti.Layer{ti.NewLayer([]ti.Entry{ti.File("f", "x"), ti.File("f/g", "y")}, ti.Gzip)}, "not a directory"},
		{"symlink loop", []*ti.Layer{ti.NewLayer([]ti.Entry{ti.Symlink("a", "b"), ti.Symlink("b", "a"), ti.File("a/x", "y")}, ti.Gzip)}, "too many levels"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := flatten.NewPlan(stack(t, tc.layers...))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, errdefs.ErrBadImage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want ErrBadImage mentioning %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.layers[len(tc.layers)-1].MustDigest().String()) {
				t.Errorf("error %q does not name the layer", err)
			}
		})
	}
}

func TestLayersNotNeededAreNotRead(t *testing.T) {
	l1 := ti.NewLayer([]ti.Entry{ti.File("a", "1")}, ti.Gzip)
	l2 := ti.NewLayer([]ti.Entry{ti.File("a", "2")}, ti.Gzip)
	ls := stack(t, l1, l2)
	ls[0].Open = func() (io.ReadCloser, error) { return nil, errors.New("layer 1 should not be read") }
	p, err := flatten.NewPlan(ls)
	if err != nil {
		t.Fatal(err)
	}
	if p.LayersRead() != 1 {
		t.Errorf("LayersRead = %d, want 1", p.LayersRead())
	}
	x := build(t, ls)
	if got := x.Cat("/a"); got != "2" {
		t.Errorf("/a = %q", got)
	}
}

package imagestore_test

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

// richImage has three layers (gzip, zstd, plain tar) covering whiteouts,
// opaque directories, hardlinks within and across layers, symlinks, a device
// node, a fifo, xattrs, owners and special modes, and a non-root user.
func richImage(t *testing.T) (v1.Image, []*ti.Layer) {
	big := bytes.Repeat([]byte("boxctl-rootfs-"), 80000)
	l1 := ti.NewLayer([]ti.Entry{
		ti.Dir("etc"),
		ti.File("etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"),
		ti.File("etc/motd", "old motd"),
		ti.Dir("bin"),
		ti.File("bin/busybox", "BUSYBOX").With(0o755, 0, 0),
		ti.Hardlink("bin/sh", "bin/busybox"),
		ti.Symlink("bin/ls", "busybox"),
		ti.Dir("usr/lib/app"),
		ti.File("usr/lib/app/old1", "1"),
		ti.File("usr/lib/app/old2", "2"),
		ti.File("usr/bin/passwd", "setuid").With(0o4755, 0, 0),
		ti.File("usr/bin/ping", "ping").With(0o755, 0, 0).WithXattrs(map[string]string{"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "user.origin": "layer1"}),
		ti.CharDev("dev/null", 1, 3),
		ti.Fifo("run/initctl"),
		ti.Dir("tmp").With(0o1777, 0, 0),
		{Name: "usr/share/big.dat", Type: tar.TypeReg, Mode: 0o644, Data: big},
	}, ti.Gzip)
	l2 := ti.NewLayer([]ti.Entry{
		ti.Whiteout("etc/motd"),
		ti.Dir("usr/lib/app"),
		ti.Opaque("usr/lib/app"),
		ti.File("usr/lib/app/new", "new"),
		ti.Hardlink("usr/bin/sh-link", "bin/busybox"), // to a lower layer
		ti.Dir("home/app").With(0o700, 1000, 1000),
		ti.File("home/app/.profile", "PS1='$ '\n").With(0o600, 1000, 1000),
	}, ti.Zstd)
	l3 := ti.NewLayer([]ti.Entry{
		ti.File("etc/hostname", "box"),
		ti.File("/etc/abs-name", "absolute entry"), // absolute names are image-relative
	}, ti.Uncompressed)
	cfg := v1.Config{
		Entrypoint:   []string{"/bin/sh", "-c"},
		Cmd:          []string{"echo hi"},
		Env:          []string{"PATH=/usr/bin:/bin", "APP=1"},
		WorkingDir:   "/home/app",
		User:         "1000:1000",
		ExposedPorts: map[string]struct{}{"8080/tcp": {}, "53/udp": {}},
		Labels:       map[string]string{"org.example": "yes"},
		StopSignal:   "SIGTERM",
	}
	return mustImage(t, []*ti.Layer{l1, l2, l3}, cfg, "linux/amd64"), []*ti.Layer{l1, l2, l3}
}

func TestPullAndRootDisk(t *testing.T) {
	r := newRegistry(t)
	img, layers := richImage(t)
	ref := reg(t, r, "test/rich:v1", img)
	s := openStore(t)

	var mu sync.Mutex
	events := map[string][]imagestore.ProgressEvent{}
	got, err := s.Pull(ctx(t), ref, imagestore.PullOptions{Progress: func(ev imagestore.ProgressEvent) {
		mu.Lock()
		events[ev.Layer] = append(events[ev.Layer], ev)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	if got.Digest != digestOf(t, img) {
		t.Errorf("digest %s, want %s", got.Digest, digestOf(t, img))
	}
	if got.Ref != ref {
		t.Errorf("ref %q, want %q", got.Ref, ref)
	}
	want := imagestore.ImageConfig{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"},
		Env: []string{"PATH=/usr/bin:/bin", "APP=1"}, WorkingDir: "/home/app", User: "1000:1000",
		ExposedPorts: []string{"53/udp", "8080/tcp"}, Labels: map[string]string{"org.example": "yes"},
		StopSignal: "SIGTERM", OS: "linux", Architecture: "amd64", Created: ti.Epoch,
	}
	if !reflect.DeepEqual(got.Config, want) {
		t.Errorf("config\n got %+v\nwant %+v", got.Config, want)
	}
	if len(got.Layers) != 3 {
		t.Fatalf("%d layers", len(got.Layers))
	}
	for i, l := range layers {
		d := l.MustDigest().String()
		evs := events[d]
		if len(evs) < 2 || evs[0].State != imagestore.LayerWaiting || evs[len(evs)-1].State != imagestore.LayerDone {
			t.Errorf("layer %d events %+v: want waiting ... done", i, evs)
			continue
		}
		last := evs[len(evs)-1]
		if last.Done != int64(len(l.Blob())) || last.Total != last.Done || last.Index != i {
			t.Errorf("layer %d final event %+v", i, last)
		}
		if r.BlobGets(l.MustDigest()) != 1 {
			t.Errorf("layer %d fetched %d times", i, r.BlobGets(l.MustDigest()))
		}
	}

	rd, err := s.RootDisk(ctx(t), got.Digest)
	if err != nil {
		t.Fatalf("root disk: %v", err)
	}
	if !rd.Built || rd.Image.Digest != got.Digest || rd.Image.Config.User != "1000:1000" {
		t.Errorf("root disk %+v", rd)
	}
	if fi, err := os.Stat(rd.Path); err != nil || fi.Size() != rd.Size || fi.Mode().Perm() != 0o444 {
		t.Errorf("root disk file: %v %v", fi, err)
	}
	x := ti.OpenExt4(t, rd.Path)
	x.Fsck()
	checkRich(t, x)

	// Again: nothing downloaded, nothing rebuilt.
	gets := r.TotalBlobGets()
	var states []imagestore.LayerState
	again, err := s.Pull(ctx(t), ref, imagestore.PullOptions{Progress: func(ev imagestore.ProgressEvent) { states = append(states, ev.State) }})
	if err != nil || again.Digest != got.Digest {
		t.Fatalf("second pull: %v %v", again.Digest, err)
	}
	if r.TotalBlobGets() != gets {
		t.Errorf("second pull fetched %d blobs", r.TotalBlobGets()-gets)
	}
	if n := strings.Count(strings.Join(toStrings(states), " "), "cached"); n != 3 {
		t.Errorf("second pull states %v, want 3 cached", states)
	}
	rd2, err := s.RootDisk(ctx(t), got.Digest)
	if err != nil || rd2.Built || rd2.Path != rd.Path {
		t.Errorf("second root disk %+v %v", rd2, err)
	}

	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Digest != got.Digest || !reflect.DeepEqual(list[0].Refs, []string{ref}) {
		t.Errorf("List = %+v, %v", list, err)
	}
	if look, err := s.Lookup(ref, ""); err != nil || look.Digest != got.Digest {
		t.Errorf("Lookup = %v, %v", look.Digest, err)
	}
}

func toStrings(ss []imagestore.LayerState) []string {
	var out []string
	for _, s := range ss {
		out = append(out, string(s))
	}
	return out
}

func checkRich(t *testing.T, x *ti.Ext4) {
	t.Helper()
	for p, want := range map[string]string{
		"/etc/passwd":        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
		"/etc/hostname":      "box",
		"/etc/abs-name":      "absolute entry",
		"/bin/busybox":       "BUSYBOX",
		"/usr/lib/app/new":   "new",
		"/home/app/.profile": "PS1='$ '\n",
	} {
		if got := x.Cat(p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	for _, gone := range []string{"/etc/motd", "/usr/lib/app/old1", "/usr/lib/app/old2"} {
		if _, ok := x.Stat(gone); ok {
			t.Errorf("%s exists; should be whited out", gone)
		}
	}
	bb, sh, link := x.MustStat("/bin/busybox"), x.MustStat("/bin/sh"), x.MustStat("/usr/bin/sh-link")
	if bb.Inode != sh.Inode || bb.Inode != link.Inode || bb.Links != 3 {
		t.Errorf("busybox hardlinks: inodes %d %d %d, links %d; want one inode with 3 links", bb.Inode, sh.Inode, link.Inode, bb.Links)
	}
	if s := x.MustStat("/bin/ls"); s.Type != "symlink" || s.LinkTarget != "busybox" {
		t.Errorf("/bin/ls: %+v", s)
	}
	if s := x.MustStat("/usr/bin/passwd"); s.Mode != 0o4755 {
		t.Errorf("/usr/bin/passwd mode %#o", s.Mode)
	}
	if s := x.MustStat("/tmp"); s.Mode != 0o1777 {
		t.Errorf("/tmp mode %#o", s.Mode)
	}
	if s := x.MustStat("/dev/null"); s.Type != "character special" || s.Major != 1 || s.Minor != 3 {
		t.Errorf("/dev/null: %+v", s)
	}
	if s := x.MustStat("/run/initctl"); s.Type != "FIFO" {
		t.Errorf("/run/initctl: %+v", s)
	}
	if s := x.MustStat("/home/app"); s.Uid != 1000 || s.Gid != 1000 || s.Mode != 0o700 {
		t.Errorf("/home/app: %+v", s)
	}
	if s := x.MustStat("/home/app/.profile"); s.Uid != 1000 || s.Mode != 0o600 {
		t.Errorf("/home/app/.profile: %+v", s)
	}
	ping := x.MustStat("/usr/bin/ping")
	if ping.Xattrs["user.origin"] != "layer1" || !strings.HasPrefix(ping.Xattrs["security.capability"], "01 00 00 02") {
		t.Errorf("/usr/bin/ping xattrs %v", ping.Xattrs)
	}
	if s := x.MustStat("/usr/share/big.dat"); s.Size != 14*80000 {
		t.Errorf("big.dat size %d", s.Size)
	}
	if got := x.Names("/usr/lib/app"); len(got) != 1 || got[0] != "new" {
		t.Errorf("/usr/lib/app holds %v", got)
	}
	if s := x.MustStat("/etc/passwd"); s.Mtime != ti.Epoch.Unix() {
		t.Errorf("mtime %d", s.Mtime)
	}
}

func TestMultiArchIndex(t *testing.T) {
	r := newRegistry(t)
	mk := func(arch string) v1.Image {
		return mustImage(t, []*ti.Layer{ti.NewLayer([]ti.Entry{ti.File("arch", arch)}, ti.Gzip)}, v1.Config{}, "linux/"+arch)
	}
	amd, arm := mk("amd64"), mk("arm64")
	idx, err := ti.Index(map[string]v1.Image{"linux/amd64": amd, "linux/arm64/v8": arm})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.PushIndex("multi/app:latest", idx); err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()
	s := openStore(t)
	for _, tc := range []struct{ platform, wantArch string }{{"", "amd64"}, {"linux/arm64", "arm64"}, {"linux/arm64/v8", "arm64"}} {
		img, err := s.Pull(ctx(t), r.Ref("multi/app"), imagestore.PullOptions{Platform: tc.platform})
		if err != nil {
			t.Fatalf("pull %q: %v", tc.platform, err)
		}
		want := amd
		if tc.wantArch == "arm64" {
			want = arm
		}
		if img.Digest != digestOf(t, want) || img.Platform.Architecture != tc.wantArch || img.IndexDigest != idxDigest.String() {
			t.Errorf("platform %q: got %s (%s), want %s", tc.platform, img.Digest, img.Platform, digestOf(t, want))
		}
		rd, err := s.RootDisk(ctx(t), img.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if got := ti.OpenExt4(t, rd.Path).Cat("/arch"); got != tc.wantArch {
			t.Errorf("platform %q: /arch = %q", tc.platform, got)
		}
	}
	_, err = s.Pull(ctx(t), r.Ref("multi/app"), imagestore.PullOptions{Platform: "linux/s390x"})
	if !errorsIs(err, imagestore.ErrNotFound) {
		t.Fatalf("s390x: %v, want ErrNotFound", err)
	}
	mustContain(t, err, "linux/s390x", "linux/amd64", "linux/arm64")
	// Both platforms are recorded under one reference.
	if a, err := s.Lookup(r.Ref("multi/app"), "linux/arm64"); err != nil || a.Platform.Architecture != "arm64" {
		t.Errorf("lookup arm64: %v %v", a.Platform, err)
	}
}

func TestSinglePlatformImageWrongPlatform(t *testing.T) {
	r := newRegistry(t)
	ref := reg(t, r, "single/app:1", simpleImage(t, "x"))
	s := openStore(t)
	_, err := s.Pull(ctx(t), ref, imagestore.PullOptions{Platform: "linux/arm64"})
	if !errorsIs(err, imagestore.ErrNotFound) {
		t.Fatalf("%v, want ErrNotFound", err)
	}
	mustContain(t, err, "linux/amd64", "linux/arm64")
	assertNothingCached(t, s)
}

func TestPullPolicies(t *testing.T) {
	r := newRegistry(t)
	ref := reg(t, r, "pol/app:1", simpleImage(t, "p"))
	s := openStore(t)
	if _, err := s.Pull(ctx(t), ref, imagestore.PullOptions{Policy: imagestore.PullNever}); !errorsIs(err, imagestore.ErrNotFound) {
		t.Fatalf("PullNever on empty cache: %v", err)
	}
	img, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	manifests := r.ManifestGets()
	r.Close() // from now on the registry is gone
	for _, p := range []imagestore.PullPolicy{imagestore.PullIfMissing, imagestore.PullNever} {
		got, err := s.Pull(ctx(t), ref, imagestore.PullOptions{Policy: p})
		if err != nil || got.Digest != img.Digest {
			t.Errorf("policy %d: %v %v", p, got.Digest, err)
		}
	}
	// A digest reference never needs the registry once cached.
	byDigest := strings.Split(ref, ":1")[0] + "@" + img.Digest
	if got, err := s.Pull(ctx(t), byDigest, imagestore.PullOptions{}); err != nil || got.Digest != img.Digest {
		t.Errorf("digest ref: %v %v", got.Digest, err)
	}
	if r.ManifestGets() != manifests {
		t.Errorf("cached pulls asked the registry")
	}
	if _, err := s.Pull(ctx(t), ref, imagestore.PullOptions{}); !errorsIs(err, imagestore.ErrUnreachable) {
		t.Errorf("PullAlways with the registry gone: %v, want ErrUnreachable", err)
	}
}

func TestOCILayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	one, two := simpleImage(t, "one"), simpleImage(t, "two")
	if err := ti.WriteLayout(dir, map[string]v1.Image{"v1": one, "v2": two}); err != nil {
		t.Fatal(err)
	}
	s := openStore(t)
	for ref, want := range map[string]v1.Image{
		"oci-layout:" + dir + ":v1":                  one,
		"oci-layout:" + dir + ":v2":                  two,
		"oci-layout:" + dir + "@" + digestOf(t, two): two,
	} {
		img, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if img.Digest != digestOf(t, want) {
			t.Errorf("%s: digest %s", ref, img.Digest)
		}
		rd, err := s.RootDisk(ctx(t), img.Digest)
		if err != nil {
			t.Fatal(err)
		}
		wantID := "one"
		if want == two {
			wantID = "two"
		}
		if got := ti.OpenExt4(t, rd.Path).Cat("/id"); got != wantID {
			t.Errorf("%s: /id = %q", ref, got)
		}
	}
	_, err := s.Pull(ctx(t), "oci-layout:"+dir+":v3", imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrNotFound) {
		t.Errorf("missing tag: %v", err)
	}
	mustContain(t, err, `"v3"`, dir, "v1, v2")
	_, err = s.Pull(ctx(t), "oci-layout:"+dir, imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrBadReference) {
		t.Errorf("ambiguous layout: %v", err)
	}
	mustContain(t, err, "holds 2 images")

	// A layout with a single image needs no tag; a layout index with a
	// multi-platform image resolves the platform.
	single := filepath.Join(t.TempDir(), "single")
	if err := ti.WriteLayout(single, map[string]v1.Image{"": one}); err != nil {
		t.Fatal(err)
	}
	if img, err := s.Pull(ctx(t), "oci-layout:"+single, imagestore.PullOptions{}); err != nil || img.Digest != digestOf(t, one) {
		t.Errorf("single-image layout: %v %v", img.Digest, err)
	}
	arm := mustImage(t, []*ti.Layer{ti.NewLayer([]ti.Entry{ti.File("arch", "arm64")}, ti.Gzip)}, v1.Config{}, "linux/arm64")
	idx, err := ti.Index(map[string]v1.Image{"linux/amd64": one, "linux/arm64": arm})
	if err != nil {
		t.Fatal(err)
	}
	if err := ti.WriteLayoutIndex(dir, "multi", idx); err != nil {
		t.Fatal(err)
	}
	if img, err := s.Pull(ctx(t), "oci-layout:"+dir+":multi", imagestore.PullOptions{Platform: "linux/arm64"}); err != nil || img.Digest != digestOf(t, arm) {
		t.Errorf("layout index arm64: %v %v", img.Digest, err)
	}
	if _, err := s.Pull(ctx(t), "oci-layout:"+t.TempDir(), imagestore.PullOptions{}); !errorsIs(err, imagestore.ErrBadImage) {
		t.Errorf("not a layout: %v", err)
	}
}

func TestDockerArchive(t *testing.T) {
	dir := t.TempDir()
	one, two := simpleImage(t, "one"), simpleImage(t, "two")
	multi := filepath.Join(dir, "multi.tar")
	if err := ti.WriteDockerArchive(multi, map[string]v1.Image{"example.com/app:one": one, "app:two": two}); err != nil {
		t.Fatal(err)
	}
	s := openStore(t)
	for ref, wantID := range map[string]string{
		"docker-archive:" + multi + ":example.com/app:one":       "one",
		"docker-archive:" + multi + ":app:two":                   "two",
		"docker-archive:" + multi + ":docker.io/library/app:two": "two",
	} {
		img, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		rd, err := s.RootDisk(ctx(t), img.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if got := ti.OpenExt4(t, rd.Path).Cat("/id"); got != wantID {
			t.Errorf("%s: /id = %q", ref, got)
		}
		// References are recorded in canonical form.
		canon := strings.Replace(strings.Replace(ref, ":app:two", ":docker.io/library/app:two", 1), "docker.io/library/docker.io/library", "docker.io/library", 1)
		if img.Ref != canon {
			t.Errorf("ref %q, want %q", img.Ref, canon)
		}
	}
	_, err := s.Pull(ctx(t), "docker-archive:"+multi, imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrBadReference) {
		t.Errorf("ambiguous archive: %v", err)
	}
	mustContain(t, err, "holds 2 images", "app:two")
	if _, err := s.Pull(ctx(t), "docker-archive:"+multi+":nope:1", imagestore.PullOptions{}); !errorsIs(err, imagestore.ErrNotFound) {
		t.Errorf("missing tag: %v", err)
	}

	// A single-image archive, gzip-compressed (docker save | gzip).
	single := filepath.Join(dir, "single.tar")
	if err := ti.WriteDockerArchive(single, map[string]v1.Image{"solo:latest": one}); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(single)
	gz := filepath.Join(dir, "single.tar.gz")
	os.WriteFile(gz, gzipBytes(raw), 0o644)
	for _, ref := range []string{"docker-archive:" + single, "docker-archive:" + gz, "docker-archive:" + single + ":@0"} {
		img, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if img.ConfigDigest != mustConfigDigest(t, one) {
			t.Errorf("%s: config %s", ref, img.ConfigDigest)
		}
	}
	if tmp := files(t, filepath.Join(s.Dir(), "tmp")); len(tmp) != 0 {
		t.Errorf("tmp/ not cleaned: %v", tmp)
	}
}

func mustConfigDigest(t *testing.T, img v1.Image) string {
	d, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

package imagestore_test

import (
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

func TestRemoveAndPrune(t *testing.T) {
	r := newRegistry(t)
	base := ti.NewLayer([]ti.Entry{ti.File("base", "shared")}, ti.Gzip)
	topA := ti.NewLayer([]ti.Entry{ti.File("id", "a")}, ti.Gzip)
	topB := ti.NewLayer([]ti.Entry{ti.File("id", "b")}, ti.Gzip)
	a := mustImage(t, []*ti.Layer{base, topA}, v1.Config{}, "linux/amd64")
	b := mustImage(t, []*ti.Layer{base, topB}, v1.Config{}, "linux/amd64")
	refA, refB := reg(t, r, "gc/a:1", a), reg(t, r, "gc/b:1", b)
	s := openStore(t)
	var disks []string
	for _, ref := range []string{refA, refB} {
		img, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rd, err := s.RootDisk(ctx(t), img.Digest)
		if err != nil {
			t.Fatal(err)
		}
		disks = append(disks, rd.Path)
	}
	blob := func(l *ti.Layer) string { return filepath.Join(s.Dir(), "blobs", "sha256", l.MustDigest().Hex) }
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }

	rep, err := s.Remove(ctx(t), digestOf(t, a))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Images) != 1 || rep.RootDisks != 1 || rep.Blobs != 3 || rep.BytesFreed == 0 {
		t.Errorf("remove report %+v: want 1 image, 1 root disk, 3 blobs (manifest, config, top layer)", rep)
	}
	if exists(blob(topA)) || exists(disks[0]) {
		t.Error("image a's own layer or root disk survived its removal")
	}
	if !exists(blob(base)) || !exists(blob(topB)) || !exists(disks[1]) {
		t.Error("removing a deleted what b still uses")
	}
	if _, err := s.Lookup(refA, ""); !errorsIs(err, imagestore.ErrNotFound) {
		t.Errorf("lookup of removed image: %v", err)
	}
	if _, err := s.Remove(ctx(t), digestOf(t, a)); !errorsIs(err, imagestore.ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	if imgs, _ := s.List(); len(imgs) != 1 || imgs[0].Digest != digestOf(t, b) {
		t.Errorf("List after remove: %+v", imgs)
	}

	// Prune keeps what keep says, then everything goes.
	if rep, err := s.Prune(ctx(t), func(d string) bool { return d == digestOf(t, b) }); err != nil || len(rep.Images) != 0 {
		t.Errorf("prune keeping b: %+v %v", rep, err)
	}
	// Garbage from a crashed build is collected.
	os.WriteFile(filepath.Join(s.Dir(), "tmp", "rootfs-crashed.partial"), []byte("x"), 0o644)
	rep, err = s.Prune(ctx(t), nil)
	if err != nil || len(rep.Images) != 1 {
		t.Fatalf("prune all: %+v %v", rep, err)
	}
	for _, sub := range []string{"blobs", "images", "refs", "rootfs", "index", "tmp", "locks"} {
		if fs := files(t, filepath.Join(s.Dir(), sub)); len(fs) != 0 {
			t.Errorf("%s/ still holds %v", sub, fs)
		}
	}
}

func TestMirrors(t *testing.T) {
	mirror := newRegistry(t)
	img := simpleImage(t, "mirrored")
	// The origin host is down; the mirror has the image under a prefix.
	origin := closedPort(t)
	if err := mirror.Push("cache/team/app:1", img); err != nil {
		t.Fatal(err)
	}
	dead := closedPort(t)
	s := openStore(t, imagestore.WithRegistryConfig(imagestore.RegistryConfig{
		Mirrors: map[string][]string{origin: {"http://" + dead, "http://" + mirror.Host + "/cache"}},
	}))
	got, err := s.Pull(ctx(t), origin+"/team/app:1", imagestore.PullOptions{})
	if err != nil {
		t.Fatalf("pull through mirror: %v", err)
	}
	if got.Digest != digestOf(t, img) || got.Ref != origin+"/team/app:1" {
		t.Errorf("got %s as %s", got.Digest, got.Ref)
	}
	// With every endpoint down, the error is about the origin.
	s2 := openStore(t, imagestore.WithRegistryConfig(imagestore.RegistryConfig{
		Mirrors: map[string][]string{origin: {dead}},
	}))
	_, err = s2.Pull(ctx(t), origin+"/team/app:1", imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrUnreachable) {
		t.Fatalf("%v, want ErrUnreachable", err)
	}
	mustContain(t, err, origin, "mirrors failed too")
}

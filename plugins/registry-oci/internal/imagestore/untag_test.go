package imagestore_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

func TestUntag(t *testing.T) {
	r := newRegistry(t)
	img := simpleImage(t, "untag")
	ref1, ref2 := reg(t, r, "tags/app:1", img), reg(t, r, "tags/app:2", img)
	s := openStore(t)
	for _, ref := range []string{ref1, ref2} {
		if _, err := s.Pull(ctx(t), ref, imagestore.PullOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The same reference recorded for an explicit platform too: untagging
	// removes every record of it.
	if _, err := s.Pull(ctx(t), ref1, imagestore.PullOptions{Platform: "linux/amd64"}); err != nil {
		t.Fatal(err)
	}
	d := digestOf(t, img)
	rd, err := s.RootDisk(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}

	rep, err := s.Untag(ctx(t), ref1, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Images) != 0 || rep.BytesFreed != 0 {
		t.Errorf("untag with a tag left removed something: %+v", rep)
	}
	got, err := s.Image(d)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Refs, []string{ref2}) {
		t.Errorf("refs after untag = %v, want [%s]", got.Refs, ref2)
	}
	if _, err := s.Lookup(ref1, ""); !errorsIs(err, imagestore.ErrNotFound) {
		t.Errorf("lookup of the removed tag: %v", err)
	}
	if _, err := s.Untag(ctx(t), ref1, d); !errorsIs(err, imagestore.ErrNotFound) {
		t.Errorf("second untag: %v, want ErrNotFound", err)
	}

	rep, err = s.Untag(ctx(t), ref2, d)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Images, []string{d}) || rep.RootDisks != 1 || rep.BytesFreed == 0 {
		t.Errorf("untag of the last reference: %+v, want the image and its root disk removed", rep)
	}
	if _, err := os.Stat(rd.Path); err == nil {
		t.Error("root disk survived the removal of its image")
	}
	if imgs, _ := s.List(); len(imgs) != 0 {
		t.Errorf("List after the last untag: %+v", imgs)
	}
	if _, err := s.Untag(ctx(t), "UPPER/case", d); !errorsIs(err, imagestore.ErrBadReference) {
		t.Errorf("bad reference: %v", err)
	}
}

func TestPruneImagesSeesReferences(t *testing.T) {
	r := newRegistry(t)
	old, cur := simpleImage(t, "old"), simpleImage(t, "new")
	ref := reg(t, r, "moving/app:1", old)
	s := openStore(t)
	if _, err := s.Pull(ctx(t), ref, imagestore.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	reg(t, r, "moving/app:1", cur)
	if _, err := s.Pull(ctx(t), ref, imagestore.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	rep, err := s.PruneImages(ctx(t), func(img imagestore.Image) bool { return len(img.Refs) > 0 })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Images, []string{digestOf(t, old)}) {
		t.Errorf("pruned %v, want only the untagged %s", rep.Images, digestOf(t, old))
	}
	if rep, err := s.PruneImages(ctx(t), nil); err != nil || !slices.Equal(rep.Images, []string{digestOf(t, cur)}) {
		t.Errorf("prune all: %+v, %v", rep, err)
	}
}

func TestPullStatus(t *testing.T) {
	r := newRegistry(t)
	img := mustImage(t, []*ti.Layer{ti.NewLayer([]ti.Entry{ti.File("f", "x")}, ti.Gzip)}, v1.Config{}, "linux/amd64")
	ref := reg(t, r, "status/app:1", img)
	s := openStore(t)
	var lines []string
	if _, err := s.Pull(ctx(t), ref, imagestore.PullOptions{Status: func(l string) { lines = append(lines, l) }}); err != nil {
		t.Fatal(err)
	}
	want := "resolved " + ref + " to " + digestOf(t, img)
	if len(lines) != 1 || lines[0] != want {
		t.Errorf("status lines %q, want [%q]", lines, want)
	}
	lines = nil
	if _, err := s.Pull(ctx(t), ref, imagestore.PullOptions{Policy: imagestore.PullIfMissing, Status: func(l string) { lines = append(lines, l) }}); err != nil {
		t.Fatal(err)
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "in the cache as "+digestOf(t, img)) {
		t.Errorf("status lines of a cached pull: %q", lines)
	}
}

package plugin_test

import (
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
	"github.com/boxctl/boxctl/sdk"
)

// TestExportImageToAnotherCache: images from every kind of source (a
// docker archive has Docker media types) export as layouts that another
// cache, which never saw the source, pulls as the same image with the same
// root filesystem.
func TestExportImageToAnotherCache(t *testing.T) {
	dir := t.TempDir()
	img := simpleImage(t, "exported")
	layout := filepath.Join(dir, "layout")
	if err := ti.WriteLayout(layout, map[string]v1.Image{"v1": img}); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "image.tar")
	if err := ti.WriteDockerArchive(archive, map[string]v1.Image{"example.com/app:1": img}); err != nil {
		t.Fatal(err)
	}
	src, _ := serve(t, setup{})
	dst, _ := serve(t, setup{})
	for i, ref := range []string{"oci-layout:" + layout + ":v1", "docker-archive:" + archive} {
		got := pull(t, src, ref)
		out := filepath.Join(dir, "export", string(rune('a'+i)))
		if err := os.MkdirAll(filepath.Dir(out), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := src.(sdk.ImageExporter).ExportImage(testCtx(t), got.Digest, out); err != nil {
			t.Fatalf("export %s: %v", ref, err)
		}
		back := pull(t, dst, "oci-layout:"+out+"@"+got.Digest)
		if back.Digest != got.Digest || back.Size != got.Size {
			t.Fatalf("%s: pulled back %s (%d bytes), exported %s (%d bytes)", ref, back.Digest, back.Size, got.Digest, got.Size)
		}
		rd, err := dst.RootDisk(testCtx(t), back.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if id := ti.OpenExt4(t, rd.Path).Cat("/id"); id != "exported" {
			t.Fatalf("%s: /id = %q", ref, id)
		}
		if _, err := dst.RemoveImage(testCtx(t), back.Digest); err != nil {
			t.Fatal(err)
		}
	}
	err := src.(sdk.ImageExporter).ExportImage(testCtx(t), "sha256:0000000000000000000000000000000000000000000000000000000000000000", filepath.Join(dir, "none"))
	wantRemote(t, "export of an uncached image", err, sdk.ErrNotFound)
	err = src.(sdk.ImageExporter).ExportImage(testCtx(t), digestOf(t, img), "relative/dir")
	wantRemote(t, "export to a relative path", err, sdk.ErrInvalidArgument, "relative/dir")
}

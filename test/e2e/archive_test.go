package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportImportIntoAFreshHome: a file written in a real VM survives
// stop, export (with the image), import into another home that has neither
// the image nor a way to pull it, and a boot there.
func TestExportImportIntoAFreshHome(t *testing.T) {
	src := newEnv(t)
	src.ok("run", "-d", "--name", "keeper", src.image)
	src.ok("exec", "keeper", "--", "sh", "-c", "mkdir -p /srv && echo 'written before export' > /srv/note && sync")
	src.ok("stop", "keeper")
	archive := filepath.Join(t.TempDir(), "keeper.boxar")
	src.ok("export", "--with-image", "keeper", archive)
	if fi, err := os.Stat(archive); err != nil || fi.Size() == 0 {
		t.Fatalf("archive: %v", err)
	}

	dst := newEnv(t)
	// The fresh home cannot reach the image the box was made from.
	if err := os.RemoveAll(strings.TrimPrefix(src.image, "oci-layout:")); err != nil {
		t.Fatal(err)
	}
	if out := strings.TrimSpace(dst.ok("images", "-q")); out != "" {
		t.Fatalf("the fresh home already has images: %q", out)
	}
	id := strings.TrimSpace(dst.ok("import", archive, "--name", "restored"))
	if len(id) != 32 {
		t.Fatalf("import printed %q", id)
	}
	dst.ok("start", "restored")
	if out := dst.ok("exec", "restored", "--", "cat", "/srv/note"); out != "written before export\n" {
		t.Fatalf("the file in the imported box reads %q", out)
	}
	// It is a box like any other: it writes, stops and starts again.
	dst.ok("exec", "restored", "--", "sh", "-c", "echo again >> /srv/note && sync")
	dst.ok("stop", "restored")
	dst.ok("start", "restored")
	if out := dst.ok("exec", "restored", "--", "cat", "/srv/note"); out != "written before export\nagain\n" {
		t.Fatalf("after a restart the file reads %q", out)
	}
	dst.ok("rm", "-f", "restored")
}

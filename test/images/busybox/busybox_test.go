package busybox

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

func TestBuildLayout(t *testing.T) {
	dir := t.TempDir()
	digest, err := BuildLayout(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := BuildLayout(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if digest != again {
		t.Errorf("digest not reproducible: %s vs %s", digest, again)
	}

	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 || m.Manifests[0].Digest != digest ||
		m.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != DefaultTag {
		t.Fatalf("index = %+v, want one manifest %s tagged %s", m.Manifests, digest, DefaultTag)
	}
	img, err := p.Image(digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(cf.Config.Cmd) != 1 || cf.Config.Cmd[0] != "/bin/sh" || len(cf.Config.Env) != 1 || cf.Config.Env[0] != "PATH="+Path {
		t.Errorf("config = %+v", cf.Config)
	}
	got := layerEntries(t, img)
	for _, want := range []string{"bin/busybox", "bin/sh", "bin/id", "bin/uname", "etc/passwd", "etc/group", "tmp/", "root/", "home/guest/"} {
		if got[want] == nil {
			t.Errorf("layer lacks %s", want)
		}
	}
	if h := got["bin/sh"]; h != nil && (h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox") {
		t.Errorf("bin/sh = %+v", h)
	}
	if h := got["home/guest/"]; h != nil && (h.Uid != GuestUID || h.Gid != GuestGID) {
		t.Errorf("home/guest owner = %d:%d", h.Uid, h.Gid)
	}
	if h := got["tmp/"]; h != nil && h.Mode&0o1777 != 0o1777 {
		t.Errorf("tmp mode = %o", h.Mode)
	}
}

func TestWriteRootfs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "root")
	if err := WriteRootfs(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin/cat")); err != nil || target != "busybox" {
		t.Errorf("bin/cat -> %q, %v", target, err)
	}
	passwd, err := os.ReadFile(filepath.Join(dir, "etc/passwd"))
	if err != nil || !bytes.Contains(passwd, []byte("guest:x:1000:1000:")) {
		t.Errorf("etc/passwd = %q, %v", passwd, err)
	}
	fi, err := os.Stat(filepath.Join(dir, "tmp"))
	if err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("tmp mode = %v, %v", fi.Mode(), err)
	}
}

func TestMissingBusybox(t *testing.T) {
	_, err := BuildLayout(t.TempDir(), Options{Busybox: "/nonexistent/busybox"})
	if err == nil {
		t.Fatal("no error for a missing busybox binary")
	}
}

func TestImageConfig(t *testing.T) {
	def, err := BuildLayout(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if zero, err := BuildLayout(t.TempDir(), Options{Config: &Config{}}); err != nil || zero != def {
		t.Errorf("an empty Config changed the image: %s vs %s (%v)", zero, def, err)
	}
	want := Config{Entrypoint: []string{"/bin/echo"}, Cmd: []string{"hi"}, User: GuestUser, WorkingDir: "/srv/app", Env: []string{"GREETING=hello"}}
	img, err := Image(Options{Config: &want})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if strings.Join(c.Entrypoint, " ") != "/bin/echo" || strings.Join(c.Cmd, " ") != "hi" || c.User != GuestUser ||
		c.WorkingDir != "/srv/app" || strings.Join(c.Env, " ") != "PATH="+Path+" GREETING=hello" {
		t.Errorf("config = %+v", c)
	}
	entries := layerEntries(t, img)
	for _, dir := range []string{"srv/", "srv/app/"} {
		if h := entries[dir]; h == nil || h.Typeflag != tar.TypeDir {
			t.Errorf("the working directory's %s is not in the layer", dir)
		}
	}
}

// layerEntries reads the headers of the image's single layer by name.
func layerEntries(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got[hdr.Name] = hdr
	}
}

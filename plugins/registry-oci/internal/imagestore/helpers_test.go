package imagestore_test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

// The test binary doubles as a puller process for the multi-process tests:
// run with pullerEnv set it pulls (and optionally builds the root disk) and
// prints a JSON result instead of running tests.
const pullerEnv = "REGISTRYOCI_TEST_PULLER"

type pullerResult struct {
	Digest string
	Path   string
	Built  bool
	States []string
	Err    string
}

func TestMain(m *testing.M) {
	if os.Getenv(pullerEnv) != "" {
		os.Exit(runPuller())
	}
	os.Exit(m.Run())
}

func runPuller() int {
	var res pullerResult
	defer func() { json.NewEncoder(os.Stdout).Encode(res) }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := imagestore.Open(os.Getenv("PULLER_DIR"))
	if err != nil {
		res.Err = err.Error()
		return 1
	}
	var mu sync.Mutex
	img, err := s.Pull(ctx, os.Getenv("PULLER_REF"), imagestore.PullOptions{Progress: func(ev imagestore.ProgressEvent) {
		mu.Lock()
		res.States = append(res.States, string(ev.State))
		mu.Unlock()
	}})
	if err != nil {
		res.Err = err.Error()
		return 1
	}
	res.Digest = img.Digest
	if os.Getenv("PULLER_ROOTDISK") != "" {
		rd, err := s.RootDisk(ctx, img.Digest)
		if err != nil {
			res.Err = err.Error()
			return 1
		}
		res.Path, res.Built = rd.Path, rd.Built
	}
	return 0
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func openStore(t *testing.T, opts ...imagestore.Option) *imagestore.Store {
	t.Helper()
	s, err := imagestore.Open(filepath.Join(t.TempDir(), "cache"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newRegistry(t *testing.T) *ti.Registry {
	r := ti.NewRegistry()
	t.Cleanup(r.Close)
	return r
}

func mustImage(t *testing.T, layers []*ti.Layer, cfg v1.Config, plat string) v1.Image {
	t.Helper()
	var ls []v1.Layer
	for _, l := range layers {
		ls = append(ls, l)
	}
	p, err := v1.ParsePlatform(plat)
	if err != nil {
		t.Fatal(err)
	}
	img, err := ti.Image(ls, cfg, *p)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOf(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// simpleImage is a small two-layer image whose /id file holds id.
func simpleImage(t *testing.T, id string) v1.Image {
	return mustImage(t, []*ti.Layer{
		ti.NewLayer([]ti.Entry{ti.Dir("etc"), ti.File("etc/os-release", "ID=test\n")}, ti.Gzip),
		ti.NewLayer([]ti.Entry{ti.File("id", id)}, ti.Gzip),
	}, v1.Config{Cmd: []string{"/bin/sh"}}, "linux/amd64")
}

// files lists every regular file below dir in the cache directory.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// assertNothingCached checks that a failed pull left no image record, no
// reference, no root disk, and no trace of the named blobs.
func assertNothingCached(t *testing.T, s *imagestore.Store, blobs ...v1.Hash) {
	t.Helper()
	for _, sub := range []string{"images", "refs", "rootfs"} {
		if fs := files(t, filepath.Join(s.Dir(), sub)); len(fs) > 0 {
			t.Errorf("%s/ holds %v after a failed pull", sub, fs)
		}
	}
	for _, b := range blobs {
		for _, f := range files(t, s.Dir()) {
			if strings.Contains(f, b.Hex) && !strings.HasPrefix(f, "locks/") {
				t.Errorf("%s is cached after a failed pull (%s)", b, f)
			}
		}
	}
	if imgs, err := s.List(); err != nil || len(imgs) != 0 {
		t.Errorf("List = %v, %v; want nothing", imgs, err)
	}
}

func reg(t *testing.T, r *ti.Registry, repoTag string, img v1.Image) string {
	t.Helper()
	if err := r.Push(repoTag, img); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
	return r.Ref(repoTag)
}

func mustContain(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

var _ = tar.TypeReg
var _ = fmt.Sprint

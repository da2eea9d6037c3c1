package plugin_test

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
	"github.com/boxctl/boxctl/sdk"
)

func writeLayout(t *testing.T, imgs map[string]v1.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	if err := ti.WriteLayout(dir, imgs); err != nil {
		t.Fatal(err)
	}
	return dir
}

func checkRef(imgs sdk.ImageSource, t *testing.T, ref string, plat *sdk.Platform) (string, error) {
	t.Helper()
	rc, ok := imgs.(sdk.ReferenceChecker)
	if !ok {
		t.Fatal("the image source client has no CheckReference")
	}
	return rc.CheckReference(testCtx(t), sdk.PullRequest{Reference: ref, Platform: plat})
}

// CheckReference refuses what a pull would refuse before it reaches the
// network: bad syntax, bad platforms, missing local layouts, tags and
// archives, layouts holding images no box can run. It never contacts a
// registry.
func TestCheckReference(t *testing.T) {
	r := newRegistry(t)
	imgs, _ := serve(t, setup{})
	dir := writeLayout(t, map[string]v1.Image{"v1": simpleImage(t, "layout")})
	windows := writeLayout(t, map[string]v1.Image{"": mustImage(t, []*ti.Layer{ti.NewLayer([]ti.Entry{ti.File("f", "x")}, ti.Gzip)}, v1.Config{}, "windows/amd64")})
	archive := filepath.Join(t.TempDir(), "image.tar")
	if err := ti.WriteDockerArchive(archive, map[string]v1.Image{"app:1": simpleImage(t, "archive")}); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(t.TempDir(), "fifo.tar")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	linux := func(arch string) *sdk.Platform { return &sdk.Platform{OS: "linux", Architecture: arch} }

	for _, tc := range []struct {
		name, ref string
		plat      *sdk.Platform
		kind      error
		parts     []string
	}{
		{"malformed", "@@@", nil, sdk.ErrInvalidArgument, []string{`"@@@" is not an image reference`}},
		{"empty", "", nil, sdk.ErrInvalidArgument, []string{"empty image reference"}},
		{"missing layout", "oci-layout:/nonexistent/layout", nil, sdk.ErrNotFound, []string{"/nonexistent/layout does not exist"}},
		{"missing tag", "oci-layout:" + dir + ":v2", nil, sdk.ErrNotFound, []string{`no image tagged "v2"`, "tags: v1"}},
		{"layout of another platform", "oci-layout:" + dir + ":v1", linux("arm64"), sdk.ErrNotFound, []string{"not the requested linux/arm64"}},
		{"windows layout", "oci-layout:" + windows, nil, sdk.ErrInvalidArgument, []string{"windows/amd64", "Linux guests"}},
		{"missing archive", "docker-archive:/nonexistent.tar", nil, sdk.ErrNotFound, []string{"/nonexistent.tar does not exist"}},
		{"archive is a FIFO", "docker-archive:" + fifo, nil, sdk.ErrInvalidArgument, []string{fifo, "named pipe"}},
		{"windows platform", "alpine", &sdk.Platform{OS: "windows", Architecture: "amd64"}, sdk.ErrInvalidArgument, []string{"windows/amd64", "must be linux"}},
		{"unknown architecture", "alpine", linux("bogus"), sdk.ErrInvalidArgument, []string{`unknown architecture "bogus"`, "one of 386, amd64, arm, arm64"}},
		{"architecture alias", "alpine", linux("x86_64"), sdk.ErrInvalidArgument, []string{"linux/amd64"}},
		{"no architecture", "alpine", &sdk.Platform{OS: "linux"}, sdk.ErrInvalidArgument, []string{"both os and architecture"}},
		{"bad variant", "alpine", &sdk.Platform{OS: "linux", Architecture: "arm", Variant: "v7/x"}, sdk.ErrInvalidArgument, []string{"variant"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := checkRef(imgs, t, tc.ref, tc.plat)
				done <- err
			}()
			select {
			case err := <-done:
				wantRemote(t, "check "+tc.ref, err, tc.kind, tc.parts...)
			case <-time.After(30 * time.Second):
				t.Fatal("CheckReference hung")
			}
		})
	}

	for ref, want := range map[string]string{
		"alpine":                               "docker.io/library/alpine:latest",
		r.Ref("not/pushed:1"):                  r.Ref("not/pushed:1"),
		"oci-layout:" + dir + ":v1":            "oci-layout:" + dir + ":v1",
		"oci-layout:" + dir:                    "oci-layout:" + dir,
		"docker-archive:" + archive:            "docker-archive:" + archive,
		"docker-archive:" + archive + ":app:1": "docker-archive:" + archive + ":docker.io/library/app:1",
	} {
		got, err := checkRef(imgs, t, ref, linux("amd64"))
		if err != nil || got != want {
			t.Errorf("check %s: %v, %v; want %s", ref, got, err, want)
		}
	}
	if n := r.ManifestGets() + r.TotalBlobGets(); n != 0 {
		t.Errorf("CheckReference made %d registry requests, want none", n)
	}
	if list, err := imgs.ListImages(testCtx(t)); err != nil || len(list) != 0 {
		t.Errorf("CheckReference cached something: %v, %v", list, err)
	}
}

// Hostile images come back over the wire as INVALID_ARGUMENT with the
// store's message: over the configured limit on unpacked size, not for
// Linux, without layers.
func TestHostileImagesOverTheWire(t *testing.T) {
	imgs, _ := serve(t, setup{body: `max_unpacked_size = "1GiB"`})
	sparse := ti.FromTar(ti.SparseBomb("big", 8<<30), ti.Gzip)
	layer := ti.NewLayer([]ti.Entry{ti.File("f", "x")}, ti.Gzip)
	for _, tc := range []struct {
		name  string
		img   v1.Image
		parts []string
	}{
		{"sparse entry over the limit", mustImage(t, []*ti.Layer{sparse}, v1.Config{}, "linux/amd64"),
			[]string{sparse.MustDigest().String(), `"big"`, "limit of 1GiB", `max_unpacked_size = "16GiB"`}},
		{"windows image", mustImage(t, []*ti.Layer{layer}, v1.Config{}, "windows/amd64"), []string{"windows/amd64", "Linux guests"}},
		{"no layers", mustImage(t, nil, v1.Config{}, "linux/amd64"), []string{"has no layers"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := "oci-layout:" + writeLayout(t, map[string]v1.Image{"": tc.img})
			_, err := imgs.Pull(testCtx(t), sdk.PullRequest{Reference: ref}, nil)
			wantRemote(t, "pull "+tc.name, err, sdk.ErrInvalidArgument, tc.parts...)
		})
	}
	if list, err := imgs.ListImages(testCtx(t)); err != nil || len(list) != 0 {
		t.Errorf("refused pulls left images behind: %v, %v", list, err)
	}
}

package plugin_test

import (
	"net"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
	"github.com/boxctl/boxctl/sdk"
)

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// Every bad input comes back over the wire as the right typed error, with
// the store's message (what happened, what to do) intact.
func TestPullErrorsOverTheWire(t *testing.T) {
	r := newRegistry(t)
	push(t, r, "exists/app:1", simpleImage(t, "x"))

	good := ti.NewLayer([]ti.Entry{ti.File("good", "g")}, ti.Gzip)
	evil := ti.NewLayer([]ti.Entry{ti.File("evil", "e")}, ti.Gzip)
	corrupt := push(t, r, "hostile/app:1", mustImage(t, []*ti.Layer{good, evil}, v1.Config{}, "linux/amd64"))
	r.CorruptBlob(evil.MustDigest())

	lying, other := simpleImage(t, "pinned"), simpleImage(t, "other")
	push(t, r, "lying/app:1", lying)
	push(t, r, "lying/app:2", other)
	otherManifest, err := other.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	r.OverrideManifest("lying/app", digestOf(t, lying), otherManifest)

	dotdot := ti.NewLayer([]ti.Entry{ti.File("../../etc/evil", "x")}, ti.Gzip)
	escaping := push(t, r, "bad/dotdot:1", mustImage(t, []*ti.Layer{dotdot}, v1.Config{}, "linux/amd64"))
	xz := ti.RawLayer([]byte("\xfd7zXZ\x00rest"), types.OCILayer)
	xzRef := push(t, r, "bad/xz:1", mustImage(t, []*ti.Layer{xz}, v1.Config{}, "linux/amd64"))

	closed := closedPort(t)
	imgs, _ := serve(t, setup{})

	for _, tc := range []struct {
		name, ref string
		kind      error
		parts     []string
	}{
		{"unknown repository", r.Ref("nope/missing:1"), sdk.ErrNotFound, []string{"nope/missing", "does not exist"}},
		{"unknown tag", r.Ref("exists/app:2"), sdk.ErrNotFound, []string{`tag "2"`, "check the tag"}},
		{"unknown digest", r.Ref("exists/app@sha256:" + strings.Repeat("1", 64)), sdk.ErrNotFound, []string{"not found"}},
		{"closed port", closed + "/some/app:1", sdk.ErrUnavailable, []string{"cannot reach registry " + closed, "is there a network?"}},
		{"corrupt layer", corrupt, sdk.ErrInvalidArgument, []string{"digest mismatch", evil.MustDigest().String(), "nothing was cached"}},
		{"manifest not matching its digest", r.Ref("lying/app@" + digestOf(t, lying)), sdk.ErrInvalidArgument, []string{"digest mismatch", digestOf(t, other)}},
		{"layer escaping the root", escaping, sdk.ErrInvalidArgument, []string{"../../etc/evil", "escapes"}},
		{"xz layer", xzRef, sdk.ErrUnsupported, []string{"xz"}},
		{"malformed reference", "UPPER/Case:tag", sdk.ErrInvalidArgument, []string{"not an image reference"}},
		{"empty reference", "", sdk.ErrInvalidArgument, []string{"empty image reference"}},
		{"bad layout reference", "oci-layout:", sdk.ErrInvalidArgument, []string{"missing path"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var events int
			_, err := imgs.Pull(testCtx(t), sdk.PullRequest{Reference: tc.ref}, func(sdk.PullEvent) { events++ })
			wantRemote(t, "pull "+tc.ref, err, tc.kind, tc.parts...)
		})
	}
	if list, err := imgs.ListImages(testCtx(t)); err != nil || len(list) != 0 {
		t.Errorf("failed pulls left images behind: %v, %v", list, err)
	}
}

func TestCacheErrorsOverTheWire(t *testing.T) {
	r := newRegistry(t)
	ref := push(t, r, "cached/app:1", simpleImage(t, "c"))
	imgs, _ := serve(t, setup{})
	pull(t, imgs, ref)
	unknown := "sha256:" + strings.Repeat("0", 64)
	for _, tc := range []struct {
		image string
		kind  error
		parts []string
	}{
		{r.Ref("cached/app:2"), sdk.ErrNotFound, []string{"cached/app:2", "not in the cache"}},
		{"alpine", sdk.ErrNotFound, []string{"docker.io/library/alpine:latest", "not in the cache"}},
		{unknown, sdk.ErrNotFound, []string{unknown, "not in the cache"}},
		{"sha256:0000", sdk.ErrNotFound, []string{"sha256:0000"}},
		{"abc", sdk.ErrNotFound, []string{"no cached image is named docker.io/library/abc:latest or has a digest starting with abc"}},
		{"", sdk.ErrInvalidArgument, []string{"empty image name"}},
		{"sha256:", sdk.ErrInvalidArgument, []string{"digest"}},
		{"sha256:XYZ", sdk.ErrInvalidArgument, []string{"sha256:XYZ"}},
		{"UPPER", sdk.ErrInvalidArgument, []string{"not an image reference"}},
	} {
		_, err := imgs.GetImage(testCtx(t), tc.image)
		wantRemote(t, "GetImage "+tc.image, err, tc.kind, tc.parts...)
		_, err = imgs.RootDisk(testCtx(t), tc.image)
		wantRemote(t, "RootDisk "+tc.image, err, tc.kind, tc.parts...)
		_, err = imgs.RemoveImage(testCtx(t), tc.image)
		wantRemote(t, "RemoveImage "+tc.image, err, tc.kind, tc.parts...)
	}
	// GetImage never goes to the network: an image only in the registry is
	// not found.
	gets := r.ManifestGets()
	push(t, r, "cached/app:3", simpleImage(t, "3"))
	_, err := imgs.GetImage(testCtx(t), r.Ref("cached/app:3"))
	wantRemote(t, "GetImage of an uncached image", err, sdk.ErrNotFound)
	if r.ManifestGets() != gets {
		t.Error("GetImage asked the registry")
	}
}

package plugin_test

import (
	"archive/tar"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/test/dockerregistry"
)

// baseImage is a two-file image to commit onto, pulled into imgs from a
// loopback registry.
func baseImage(t *testing.T, imgs sdk.ImageSource) sdk.Image {
	t.Helper()
	reg := newRegistry(t)
	img := mustImage(t, []*ti.Layer{ti.NewLayer([]ti.Entry{
		ti.Dir("etc"), ti.File("etc/config", "base\n"), ti.File("gone", "deleted by the commit\n"),
		ti.Dir("data"), ti.File("data/old", "old\n"),
	}, ti.Gzip)}, v1.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin", "BASE=1"}, WorkingDir: "/"}, "linux/amd64")
	return pull(t, imgs, push(t, reg, "base/img:v1", img))
}

// layerFile writes an uncompressed layer tar, as `boxctl commit` gets it from the guest.
func layerFile(t *testing.T, entries []ti.Entry) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layer.tar")
	if err := os.WriteFile(p, ti.Tar(entries), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func committer(t *testing.T, imgs sdk.ImageSource) sdk.Committer {
	t.Helper()
	c, ok := imgs.(sdk.Committer)
	if !ok {
		t.Fatalf("%T has no Commit", imgs)
	}
	return c
}

func pusher(t *testing.T, imgs sdk.ImageSource) sdk.Pusher {
	t.Helper()
	p, ok := imgs.(sdk.Pusher)
	if !ok {
		t.Fatalf("%T has no Push", imgs)
	}
	return p
}

// changesLayer adds a file (with an xattr and an owner), deletes /gone and
// replaces /data.
func changesLayer(t *testing.T) string {
	return layerFile(t, []ti.Entry{
		ti.Dir("etc"), ti.File("etc/config", "committed\n"),
		ti.Whiteout("gone"),
		ti.Dir("data"), ti.Opaque("data"), ti.File("data/new", "new\n"),
		ti.File("added", "added by the box\n").With(0o640, 1000, 50).WithXattrs(map[string]string{"user.note": "kept"}),
	})
}

func TestCommitMakesARunnableImageOnTopOfTheBase(t *testing.T) {
	imgs, _ := serve(t, setup{})
	info, err := imgs.Info(testCtx(t))
	if err != nil || !info.Capabilities.Commit || !info.Capabilities.Push {
		t.Fatalf("capabilities %v, %v: want commit and push (the sdk derives them)", info.Capabilities.Strings(), err)
	}
	base := baseImage(t, imgs)
	img, err := committer(t, imgs).Commit(testCtx(t), sdk.CommitRequest{
		Base: base.Digest, LayerPath: changesLayer(t), Reference: "myapp:v2",
		Config:  &sdk.ImageConfig{Cmd: []string{"/bin/app"}, Env: []string{"PATH=/bin", "BASE=1", "BOX=1"}},
		Comment: "from box web", Author: "tester",
	})
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest == base.Digest || !slices.Contains(img.References, "docker.io/library/myapp:v2") {
		t.Errorf("committed image %s refs %v", img.Digest, img.References)
	}
	if !slices.Equal(img.Config.Cmd, []string{"/bin/app"}) || !slices.Contains(img.Config.Env, "BOX=1") || img.Config.WorkingDir != "/" {
		t.Errorf("config %+v: want the new cmd and env over the base's workdir", img.Config)
	}
	if img.Size <= base.Size {
		t.Errorf("size %d, base %d: the new layer is not counted", img.Size, base.Size)
	}
	got, err := imgs.GetImage(testCtx(t), "myapp:v2")
	if err != nil || got.Digest != img.Digest {
		t.Fatalf("GetImage(myapp:v2) = %s, %v", got.Digest, err)
	}
	rd, err := imgs.RootDisk(testCtx(t), img.Digest)
	if err != nil {
		t.Fatal(err)
	}
	x := ti.OpenExt4(t, rd.Path)
	x.Fsck()
	if c := x.Cat("/etc/config"); c != "committed\n" {
		t.Errorf("/etc/config = %q", c)
	}
	if _, ok := x.Stat("/gone"); ok {
		t.Error("/gone, deleted in the commit, is in the root disk")
	}
	if _, ok := x.Stat("/data/old"); ok {
		t.Error("/data/old is in the root disk: the opaque directory did not hide it")
	}
	if c := x.Cat("/data/new"); c != "new\n" {
		t.Errorf("/data/new = %q", c)
	}
	st := x.MustStat("/added")
	if st.Mode&0o7777 != 0o640 || st.Uid != 1000 || st.Gid != 50 || st.Xattrs["user.note"] != "kept" {
		t.Errorf("/added: %+v", st)
	}
	// The base is untouched.
	brd, err := imgs.RootDisk(testCtx(t), base.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if c := ti.OpenExt4(t, brd.Path).Cat("/gone"); c != "deleted by the commit\n" {
		t.Errorf("base /gone = %q", c)
	}
}

func TestCommitRefusesBadInputAndLeavesNothing(t *testing.T) {
	imgs, _ := serve(t, setup{})
	base := baseImage(t, imgs)
	c := committer(t, imgs)
	notTar := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(notTar, []byte(strings.Repeat("not a tar ", 200)), 0o600)
	escape := layerFile(t, []ti.Entry{ti.File("../../etc/shadow", "x")})
	escapeLink := layerFile(t, []ti.Entry{{Name: "link", Type: tar.TypeLink, Link: "../outside"}})
	for _, tc := range []struct {
		what  string
		req   sdk.CommitRequest
		kind  error
		parts []string
	}{
		{"an uncached base", sdk.CommitRequest{Base: "sha256:" + strings.Repeat("ab", 32), LayerPath: changesLayer(t), Reference: "x:1"}, sdk.ErrNotFound, nil},
		{"a layout reference", sdk.CommitRequest{Base: base.Digest, LayerPath: changesLayer(t), Reference: "oci-layout:/tmp/x:1"}, sdk.ErrInvalidArgument, []string{"registry name"}},
		{"a digest reference", sdk.CommitRequest{Base: base.Digest, LayerPath: changesLayer(t), Reference: "x@sha256:" + strings.Repeat("ab", 32)}, sdk.ErrInvalidArgument, nil},
		{"a malformed reference", sdk.CommitRequest{Base: base.Digest, LayerPath: changesLayer(t), Reference: "UPPER/Case"}, sdk.ErrInvalidArgument, nil},
		{"a relative layer path", sdk.CommitRequest{Base: base.Digest, LayerPath: "layer.tar", Reference: "x:1"}, sdk.ErrInvalidArgument, []string{"absolute"}},
		{"a missing layer", sdk.CommitRequest{Base: base.Digest, LayerPath: "/no/such/layer.tar", Reference: "x:1"}, sdk.ErrNotFound, nil},
		{"a layer that is not a tar", sdk.CommitRequest{Base: base.Digest, LayerPath: notTar, Reference: "x:1"}, sdk.ErrInvalidArgument, []string{"not a tar"}},
		{"a layer escaping the root", sdk.CommitRequest{Base: base.Digest, LayerPath: escape, Reference: "x:1"}, sdk.ErrInvalidArgument, []string{"../../etc/shadow"}},
		{"a hard link escaping the root", sdk.CommitRequest{Base: base.Digest, LayerPath: escapeLink, Reference: "x:1"}, sdk.ErrInvalidArgument, []string{"link"}},
	} {
		_, err := c.Commit(testCtx(t), tc.req)
		wantRemote(t, tc.what, err, tc.kind, tc.parts...)
	}
	list, err := imgs.ListImages(testCtx(t))
	if err != nil || len(list) != 1 || list[0].Digest != base.Digest {
		t.Errorf("after refused commits the cache lists %d images (%v); want only the base", len(list), err)
	}
}

func TestCommitAgainMovesTheTag(t *testing.T) {
	imgs, _ := serve(t, setup{})
	base := baseImage(t, imgs)
	c := committer(t, imgs)
	first, err := c.Commit(testCtx(t), sdk.CommitRequest{Base: base.Digest, LayerPath: changesLayer(t), Reference: "app"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Commit(testCtx(t), sdk.CommitRequest{Base: first.Digest, LayerPath: layerFile(t, []ti.Entry{ti.File("more", "x")}), Reference: "app"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := imgs.GetImage(testCtx(t), "app:latest")
	if err != nil || got.Digest != second.Digest {
		t.Errorf("app:latest = %s, %v; want the second commit %s", got.Digest, err, second.Digest)
	}
	if _, err := imgs.RootDisk(testCtx(t), second.Digest); err != nil {
		t.Errorf("root disk of a commit on a commit: %v", err)
	}
}

// TestPushToARealRegistryAndPullBack pushes a committed image to Debian's
// docker-registry on loopback and pulls it into a fresh cache: same digest,
// same root disk content.
func TestPushToARealRegistryAndPullBack(t *testing.T) {
	reg := dockerregistry.Start(t)
	imgs, _ := serve(t, setup{registry: &sdk.RegistrySettings{Insecure: []string{reg.Host}}})
	base := baseImage(t, imgs)
	ref := reg.Ref("team/app:v1")
	img, err := committer(t, imgs).Commit(testCtx(t), sdk.CommitRequest{Base: base.Digest, LayerPath: changesLayer(t), Reference: ref})
	if err != nil {
		t.Fatal(err)
	}
	var events []sdk.PullEvent
	digest, err := pusher(t, imgs).Push(testCtx(t), sdk.PushRequest{Reference: ref}, func(ev sdk.PullEvent) { events = append(events, ev) })
	if err != nil {
		t.Fatalf("push: %v\nregistry log:\n%s", err, reg.Log())
	}
	if digest != img.Digest {
		t.Errorf("pushed digest %s, cached %s", digest, img.Digest)
	}
	sent := map[string]sdk.LayerState{}
	for _, ev := range events {
		if ev.Layer != nil {
			sent[ev.Layer.Digest] = ev.Layer.State
		}
	}
	if len(sent) != 2 {
		t.Errorf("push progress covers %d layers (%v); want both", len(sent), sent)
	}
	for d, s := range sent {
		if s != sdk.LayerDone {
			t.Errorf("layer %s ended %s, want done", d, s)
		}
	}
	// Again: the registry has every blob.
	events = nil
	if _, err := pusher(t, imgs).Push(testCtx(t), sdk.PushRequest{Reference: ref}, func(ev sdk.PullEvent) { events = append(events, ev) }); err != nil {
		t.Fatal(err)
	}
	for _, ev := range events {
		if ev.Layer != nil && (ev.Layer.State == sdk.LayerDownloading || ev.Layer.State == sdk.LayerDone) {
			t.Errorf("second push sent layer %s again (%s)", ev.Layer.Digest, ev.Layer.State)
		}
	}

	fresh, _ := serve(t, setup{registry: &sdk.RegistrySettings{Insecure: []string{reg.Host}}})
	back := pull(t, fresh, ref)
	if back.Digest != img.Digest {
		t.Fatalf("pulled back %s, pushed %s", back.Digest, img.Digest)
	}
	rd, err := fresh.RootDisk(testCtx(t), back.Digest)
	if err != nil {
		t.Fatal(err)
	}
	x := ti.OpenExt4(t, rd.Path)
	if c := x.Cat("/data/new"); c != "new\n" {
		t.Errorf("pulled back /data/new = %q", c)
	}
	if _, ok := x.Stat("/gone"); ok {
		t.Error("pulled back image has /gone")
	}
}

func TestPushUsesTheConfiguredCredentials(t *testing.T) {
	reg := newRegistry(t)
	imgs, _ := serve(t, setup{})
	base := baseImage(t, imgs)
	ref := reg.Ref("private/app:v1")
	if _, err := committer(t, imgs).Commit(testCtx(t), sdk.CommitRequest{Base: base.Digest, LayerPath: changesLayer(t), Reference: ref}); err != nil {
		t.Fatal(err)
	}
	reg.RequireBasicAuth("me", "secret")
	_, err := pusher(t, imgs).Push(testCtx(t), sdk.PushRequest{Reference: ref}, nil)
	wantRemote(t, "push without credentials", err, sdk.ErrUnauthenticated, reg.Host, "docker login")

	withCreds, _ := serve(t, setup{stateDir: filepath.Join(t.TempDir(), "oci"), registry: &sdk.RegistrySettings{
		Credentials: []sdk.RegistryCredential{{Registry: reg.Host, Username: "me", Password: "secret"}},
	}})
	// The same cache content in the second plugin: commit there too.
	base2 := baseImage(t, withCreds)
	img, err := committer(t, withCreds).Commit(testCtx(t), sdk.CommitRequest{Base: base2.Digest, LayerPath: changesLayer(t), Reference: ref})
	if err != nil {
		t.Fatal(err)
	}
	d, err := pusher(t, withCreds).Push(testCtx(t), sdk.PushRequest{Reference: ref}, nil)
	if err != nil || d != img.Digest {
		t.Fatalf("push with credentials: %s, %v", d, err)
	}
}

func TestPushRefusesWhatItCannotSend(t *testing.T) {
	imgs, _ := serve(t, setup{})
	p := pusher(t, imgs)
	_, err := p.Push(testCtx(t), sdk.PushRequest{Reference: "127.0.0.1:1/not/cached:v1"}, nil)
	wantRemote(t, "push of an uncached image", err, sdk.ErrNotFound, "commit or pull it first")
	_, err = p.Push(testCtx(t), sdk.PushRequest{Reference: "oci-layout:/tmp/x"}, nil)
	wantRemote(t, "push to a layout", err, sdk.ErrInvalidArgument, "registry")
}

package plugin_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/plugin"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

func TestInfo(t *testing.T) {
	c := sdktest.Serve(t, sdk.ServeConfig{Images: plugin.New()}).Images
	info, err := c.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "oci" || info.Version == "" {
		t.Errorf("info %v", info)
	}
	// Declared by the plugin, and Prune, CheckReferences, Commit, Push and
	// ExportImage set by the sdk from its optional interfaces.
	want := sdk.Capabilities{Registry: true, OCILayout: true, DockerArchive: true, RootFSExt4: true, Prune: true, CheckReferences: true, Commit: true, Push: true, ExportImage: true}
	if got := info.Capabilities; !slices.Equal(got.Strings(), want.Strings()) {
		t.Errorf("capabilities %v, want %v", got.Strings(), want.Strings())
	}
	// Role calls before Configure are refused, typed.
	_, err = c.ListImages(testCtx(t))
	wantRemote(t, "list before configure", err, sdk.ErrInvalidState, "not configured")
}

func TestPullProgressAndImage(t *testing.T) {
	r := newRegistry(t)
	base := ti.NewLayer([]ti.Entry{ti.Dir("etc"), ti.File("etc/os-release", "ID=test\n")}, ti.Gzip)
	top := ti.NewLayer([]ti.Entry{ti.File("hello", "world")}, ti.Zstd)
	cfg := v1.Config{
		Entrypoint:   []string{"/bin/app"},
		Cmd:          []string{"--serve"},
		Env:          []string{"PATH=/bin", "A=b"},
		WorkingDir:   "/srv",
		User:         "1000:1000",
		ExposedPorts: map[string]struct{}{"80/tcp": {}, "53/udp": {}},
		Labels:       map[string]string{"org.example.role": "web"},
		StopSignal:   "SIGQUIT",
	}
	img := mustImage(t, []*ti.Layer{base, top}, cfg, "linux/amd64")
	ref := push(t, r, "app/web:1", img)
	digest := digestOf(t, img)
	imgs, stateDir := serve(t, setup{})

	var events []sdk.PullEvent
	before := time.Now()
	got, err := imgs.Pull(testCtx(t), sdk.PullRequest{Reference: ref}, func(ev sdk.PullEvent) {
		events = append(events, ev)
	})
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}

	// Progress: a status line naming the digest before any layer is done;
	// per layer, waiting first and done last with all bytes counted.
	resolved, firstDone := -1, -1
	states := map[string][]sdk.LayerState{}
	var last *sdk.LayerProgress
	for i, ev := range events {
		if s := ev.Status; s == "resolved "+ref+" to "+digest && resolved < 0 {
			resolved = i
		}
		if l := ev.Layer; l != nil {
			states[l.Digest] = append(states[l.Digest], l.State)
			if l.State == sdk.LayerDone {
				if firstDone < 0 {
					firstDone = i
				}
				last = l
				if l.Done != l.Total || l.Total == 0 {
					t.Errorf("layer %s done with %d of %d bytes", l.Digest, l.Done, l.Total)
				}
			}
		}
	}
	if resolved < 0 || firstDone < 0 || resolved > firstDone {
		t.Errorf("want the status %q before the first done layer; events: %v", "resolved "+ref+" to "+digest, events)
	}
	if last == nil {
		t.Fatal("no layer reached done")
	}
	for _, l := range []*ti.Layer{base, top} {
		s := states[l.MustDigest().String()]
		if len(s) < 2 || s[0] != sdk.LayerWaiting || s[len(s)-1] != sdk.LayerDone {
			t.Errorf("layer %s went through %v, want waiting ... done", l.MustDigest(), s)
		}
	}
	if s := events[len(events)-1].Status; !strings.HasPrefix(s, "pulled "+ref) {
		t.Errorf("last event %v, want a pulled status line", events[len(events)-1])
	}

	// The image.
	if got.Digest != digest || !slices.Equal(got.References, []string{ref}) {
		t.Errorf("image digest %s refs %v, want %s [%s]", got.Digest, got.References, digest, ref)
	}
	if p := got.Platform; p.OS != "linux" || p.Architecture != "amd64" {
		t.Errorf("platform %v", p)
	}
	bs, _ := base.Size()
	ts, _ := top.Size()
	if got.Size != uint64(bs+ts) {
		t.Errorf("size %d, want the compressed layers' %d", got.Size, bs+ts)
	}
	if !got.CreatedAt.Equal(ti.Epoch) {
		t.Errorf("created %v, want %v", got.CreatedAt, ti.Epoch)
	}
	if pa := got.PulledAt; pa.Before(before.Add(-time.Second)) || pa.After(after.Add(time.Second)) {
		t.Errorf("pulled at %v, not during the pull (%v .. %v)", pa, before, after)
	}
	c := got.Config
	if !slices.Equal(c.Entrypoint, cfg.Entrypoint) || !slices.Equal(c.Cmd, cfg.Cmd) || !slices.Equal(c.Env, cfg.Env) ||
		c.WorkingDir != "/srv" || c.User != "1000:1000" || c.StopSignal != "SIGQUIT" ||
		!slices.Equal(c.ExposedPorts, []string{"53/udp", "80/tcp"}) || c.Labels["org.example.role"] != "web" {
		t.Errorf("config %v does not match %+v", c, cfg)
	}

	// A second pull downloads nothing and says so.
	gets := r.TotalBlobGets()
	events = nil
	again, err := imgs.Pull(testCtx(t), sdk.PullRequest{Reference: ref}, func(ev sdk.PullEvent) { events = append(events, ev) })
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != digest || !again.PulledAt.Equal(got.PulledAt) {
		t.Errorf("second pull: %v", again)
	}
	if r.TotalBlobGets() != gets {
		t.Errorf("second pull fetched %d blobs", r.TotalBlobGets()-gets)
	}
	for _, ev := range events {
		if l := ev.Layer; l != nil && l.State != sdk.LayerWaiting && l.State != sdk.LayerCached {
			t.Errorf("second pull: layer event %v, want waiting/cached only", l)
		}
	}

	// GetImage by reference, digest and digest prefixes, without network.
	hx := strings.TrimPrefix(digest, "sha256:")
	for _, name := range []string{ref, digest, hx, "sha256:" + hx[:12], hx[:12], " " + ref + " "} {
		gi, err := imgs.GetImage(testCtx(t), name)
		if err != nil {
			t.Errorf("GetImage(%q): %v", name, err)
			continue
		}
		if gi.Digest != digest || !slices.Equal(gi.References, []string{ref}) || gi.Config.WorkingDir != "/srv" {
			t.Errorf("GetImage(%q) = %v", name, gi)
		}
	}

	// RootDisk builds the ext4 disk in the state dir.
	rd, err := imgs.RootDisk(testCtx(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	if rd.Format != "raw" || rd.Filesystem != "ext4" || rd.Image.Digest != digest ||
		!slices.Equal(rd.Image.References, []string{ref}) {
		t.Errorf("root disk %v", rd)
	}
	if !strings.HasPrefix(rd.Path, stateDir+string(filepath.Separator)) {
		t.Errorf("root disk %s is outside the state dir %s", rd.Path, stateDir)
	}
	fi, err := os.Stat(rd.Path)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(fi.Size()) != rd.Size {
		t.Errorf("root disk size %d, file has %d", rd.Size, fi.Size())
	}
	x := ti.OpenExt4(t, rd.Path)
	x.Fsck()
	if got := x.Cat("/hello"); got != "world" {
		t.Errorf("/hello = %q", got)
	}
	if got := x.Cat("/etc/os-release"); got != "ID=test\n" {
		t.Errorf("/etc/os-release = %q", got)
	}
	// By digest prefix: the same disk, not rebuilt.
	rd2, err := imgs.RootDisk(testCtx(t), hx[:10])
	if err != nil || rd2.Path != rd.Path {
		t.Errorf("root disk by prefix: %v, %v", rd2, err)
	}

	// ListImages, newest first.
	other := push(t, r, "app/other:1", simpleImage(t, "other"))
	time.Sleep(10 * time.Millisecond) // distinct pull times on coarse clocks
	pull(t, imgs, other)
	list, err := imgs.ListImages(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || !slices.Equal(list[0].References, []string{other}) || list[1].Digest != digest {
		t.Errorf("list = %v, want %s then %s", list, other, ref)
	}
}

func TestAmbiguousDigestPrefix(t *testing.T) {
	r := newRegistry(t)
	imgs, _ := serve(t, setup{})
	// Pull images until two digests share their first hex digit (at most
	// 17 by the pigeonhole principle).
	seen := map[byte]string{}
	var prefix string
	for i := 0; prefix == ""; i++ {
		id := strings.Repeat("x", i+1)
		d := pull(t, imgs, push(t, r, "many/app:"+id, simpleImage(t, id))).Digest
		c := strings.TrimPrefix(d, "sha256:")[0]
		if _, ok := seen[c]; ok {
			prefix = string(c)
		}
		seen[c] = d
	}
	_, err := imgs.GetImage(testCtx(t), "sha256:"+prefix)
	wantRemote(t, "ambiguous prefix", err, sdk.ErrInvalidArgument, "ambiguous", "more digits")
	_, err = imgs.RemoveImage(testCtx(t), "sha256:"+prefix)
	wantRemote(t, "remove by ambiguous prefix", err, sdk.ErrInvalidArgument, "ambiguous")
}

func TestRemoveAndPrune(t *testing.T) {
	r := newRegistry(t)
	a, b := simpleImage(t, "a"), simpleImage(t, "b")
	a1, a2 := push(t, r, "rm/a:1", a), push(t, r, "rm/a:2", a)
	b1 := push(t, r, "rm/b:1", b)
	imgs, _ := serve(t, setup{})
	for _, ref := range []string{a1, a2, b1} {
		pull(t, imgs, ref)
	}
	rdA, err := imgs.RootDisk(testCtx(t), a1)
	if err != nil {
		t.Fatal(err)
	}

	// By reference: the tag goes, the image stays while tagged.
	rep, err := imgs.RemoveImage(testCtx(t), a1)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Images) != 0 || rep.Reclaimed != 0 {
		t.Errorf("untag with a tag left: %v", rep)
	}
	_, err = imgs.GetImage(testCtx(t), a1)
	wantRemote(t, "removed tag", err, sdk.ErrNotFound, a1)
	if gi, err := imgs.GetImage(testCtx(t), a2); err != nil || !slices.Equal(gi.References, []string{a2}) {
		t.Errorf("remaining tag: %v, %v", gi, err)
	}
	// The last tag takes the image, its root disk and its own blobs.
	rep, err = imgs.RemoveImage(testCtx(t), a2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Images, []string{digestOf(t, a)}) || rep.Reclaimed < uint64(1) {
		t.Errorf("removing the last tag: %v", rep)
	}
	if exists(rdA.Path) {
		t.Error("the root disk survived its image")
	}
	_, err = imgs.GetImage(testCtx(t), digestOf(t, a))
	wantRemote(t, "removed image", err, sdk.ErrNotFound, "not in the cache")
	_, err = imgs.RemoveImage(testCtx(t), a2)
	wantRemote(t, "second remove", err, sdk.ErrNotFound)

	// By digest: the image and all its tags.
	b2 := push(t, r, "rm/b:2", b)
	pull(t, imgs, b2)
	rep, err = imgs.RemoveImage(testCtx(t), strings.TrimPrefix(digestOf(t, b), "sha256:")[:12])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Images, []string{digestOf(t, b)}) || rep.Reclaimed == 0 {
		t.Errorf("remove by digest prefix: %v", rep)
	}
	for _, ref := range []string{b1, b2} {
		_, err = imgs.GetImage(testCtx(t), ref)
		wantRemote(t, "tag of an image removed by digest", err, sdk.ErrNotFound)
	}

	// Prune: untagged images only, unless all; keep wins over all.
	oldImg, newImg, kept := simpleImage(t, "old"), simpleImage(t, "new"), simpleImage(t, "kept")
	moving := push(t, r, "rm/moving:1", oldImg)
	pull(t, imgs, moving)
	push(t, r, "rm/moving:1", newImg)
	pull(t, imgs, moving) // oldImg is now untagged
	keptRef := push(t, r, "rm/kept:1", kept)
	pull(t, imgs, keptRef)

	pr, err := pruner(t, imgs).Prune(testCtx(t), sdk.PruneRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pr.Images, []string{digestOf(t, oldImg)}) || pr.Reclaimed == 0 {
		t.Errorf("prune: %v, want only the untagged %s", pr, digestOf(t, oldImg))
	}
	pr, err = pruner(t, imgs).Prune(testCtx(t), sdk.PruneRequest{All: true, Keep: []string{strings.TrimPrefix(digestOf(t, kept), "sha256:")}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pr.Images, []string{digestOf(t, newImg)}) {
		t.Errorf("prune all keeping one: %v, want %s removed", pr, digestOf(t, newImg))
	}
	list, err := imgs.ListImages(testCtx(t))
	if err != nil || len(list) != 1 || list[0].Digest != digestOf(t, kept) {
		t.Errorf("after prune: %v, %v", list, err)
	}
	_, err = pruner(t, imgs).Prune(testCtx(t), sdk.PruneRequest{Keep: []string{"sha256:abc"}})
	wantRemote(t, "prune with a bad keep digest", err, sdk.ErrInvalidArgument, "sha256:abc")
}

func TestPlatforms(t *testing.T) {
	r := newRegistry(t)
	amd := mustImage(t, []*ti.Layer{ti.NewLayer([]ti.Entry{ti.File("arch", "amd64")}, ti.Gzip)}, v1.Config{}, "linux/amd64")
	arm := mustImage(t, []*ti.Layer{ti.NewLayer([]ti.Entry{ti.File("arch", "arm64")}, ti.Gzip)}, v1.Config{}, "linux/arm64/v8")
	idx, err := ti.Index(map[string]v1.Image{"linux/amd64": amd, "linux/arm64/v8": arm})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.PushIndex("multi/app:1", idx); err != nil {
		t.Fatal(err)
	}
	ref := r.Ref("multi/app:1")

	imgs, _ := serve(t, setup{})
	if got := pull(t, imgs, ref); got.Digest != digestOf(t, amd) || got.Platform.Architecture != "amd64" {
		t.Errorf("default platform pulled %v", got)
	}
	got, err := imgs.Pull(testCtx(t), sdk.PullRequest{Reference: ref, Platform: &sdk.Platform{OS: "linux", Architecture: "arm64"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digestOf(t, arm) || got.Platform.Architecture != "arm64" || got.Platform.Variant != "v8" {
		t.Errorf("arm64 pull: %v", got)
	}
	// The reference names the default platform's image in the cache.
	if gi, err := imgs.GetImage(testCtx(t), ref); err != nil || gi.Digest != digestOf(t, amd) {
		t.Errorf("GetImage(ref) = %v, %v; want the amd64 image", gi, err)
	}
	rd, err := imgs.RootDisk(testCtx(t), digestOf(t, arm))
	if err != nil {
		t.Fatal(err)
	}
	if got := ti.OpenExt4(t, rd.Path).Cat("/arch"); got != "arm64" {
		t.Errorf("arm64 root disk has /arch = %q", got)
	}

	_, err = imgs.Pull(testCtx(t), sdk.PullRequest{Reference: ref, Platform: &sdk.Platform{OS: "linux", Architecture: "s390x"}}, nil)
	wantRemote(t, "missing platform", err, sdk.ErrNotFound, "linux/s390x", "linux/amd64", "linux/arm64/v8")
	_, err = imgs.Pull(testCtx(t), sdk.PullRequest{Reference: ref, Platform: &sdk.Platform{OS: "linux"}}, nil)
	wantRemote(t, "platform without architecture", err, sdk.ErrInvalidArgument, "architecture")

	// The config block's platform is the default.
	armDefault, _ := serve(t, setup{body: `platform = "linux/arm64"`})
	if got := pull(t, armDefault, ref); got.Digest != digestOf(t, arm) {
		t.Errorf("platform = linux/arm64 pulled %v", got)
	}
	// An image pulled only for another platform is still found by its
	// reference when it is the only one.
	onlyArm, _ := serve(t, setup{})
	if _, err := onlyArm.Pull(testCtx(t), sdk.PullRequest{Reference: ref, Platform: &sdk.Platform{OS: "linux", Architecture: "arm64"}}, nil); err != nil {
		t.Fatal(err)
	}
	if gi, err := onlyArm.GetImage(testCtx(t), ref); err != nil || gi.Digest != digestOf(t, arm) {
		t.Errorf("GetImage of the only (arm64) image with the reference: %v, %v", gi, err)
	}
}

func TestLayoutAndArchive(t *testing.T) {
	img := simpleImage(t, "local")
	dir := t.TempDir()
	layoutDir := filepath.Join(dir, "layout")
	if err := ti.WriteLayout(layoutDir, map[string]v1.Image{"v1": img}); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "image.tar")
	if err := ti.WriteDockerArchive(archive, map[string]v1.Image{"example.com/local/app:1": img}); err != nil {
		t.Fatal(err)
	}
	imgs, _ := serve(t, setup{})
	for _, ref := range []string{"oci-layout:" + layoutDir + ":v1", "docker-archive:" + archive} {
		got := pull(t, imgs, ref)
		if !slices.Contains(got.References, ref) {
			t.Errorf("pull %s: references %v", ref, got.References)
		}
		rd, err := imgs.RootDisk(testCtx(t), ref)
		if err != nil {
			t.Fatal(err)
		}
		if got := ti.OpenExt4(t, rd.Path).Cat("/id"); got != "local" {
			t.Errorf("%s: /id = %q", ref, got)
		}
	}
	_, err := imgs.Pull(testCtx(t), sdk.PullRequest{Reference: "docker-archive:" + filepath.Join(dir, "missing.tar")}, nil)
	wantRemote(t, "missing archive", err, sdk.ErrNotFound, "missing.tar")
}

func TestCancelledPull(t *testing.T) {
	r := newRegistry(t)
	l := ti.NewLayer([]ti.Entry{ti.File("big", strings.Repeat("x", 1<<20))}, ti.Uncompressed)
	ref := push(t, r, "slow/app:1", mustImage(t, []*ti.Layer{l}, v1.Config{}, "linux/amd64"))
	release := r.StallBlob(l.MustDigest(), 1000)
	defer release()
	imgs, _ := serve(t, setup{})
	ctx, cancel := context.WithCancel(testCtx(t))
	_, err := imgs.Pull(ctx, sdk.PullRequest{Reference: ref}, func(ev sdk.PullEvent) {
		if ev.Layer != nil && ev.Layer.State == sdk.LayerDownloading {
			cancel()
		}
	})
	if err == nil {
		t.Fatal("a cancelled pull succeeded")
	}
	if list, err := imgs.ListImages(testCtx(t)); err != nil || len(list) != 0 {
		t.Errorf("after a cancelled pull: %v, %v", list, err)
	}
	release()
	// The next pull finishes it.
	if got := pull(t, imgs, ref); len(got.References) != 1 {
		t.Errorf("pull after cancel: %v", got)
	}
}

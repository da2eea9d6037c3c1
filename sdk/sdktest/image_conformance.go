package sdktest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boxctl/boxctl/sdk"
)

// NewImageSourceFunc returns a fresh, configured ImageSource with an empty
// cache of its own, served the way boxctl sees it (in-process through
// Serve, or a plugin binary), so that Info carries the capabilities the sdk
// derives from the optional interfaces. It also returns the plugin's state
// directory, which the suite lists when a check fails ("" to list nothing).
// Every check calls it once: checks never see each other's images.
type NewImageSourceFunc func(t *testing.T) (sdk.ImageSource, string)

// ImageFixture names the test images the suite pulls. The caller provides
// them (a local OCI layout, a registry on loopback, ...), so the suite runs
// against any source without network access of its own.
type ImageFixture struct {
	// Reference is an image the source can pull.
	Reference string
	// Config is what Reference's image config says: the suite compares
	// Entrypoint, Cmd, Env, WorkingDir and User (nil and empty are equal).
	Config sdk.ImageConfig
	// Alias is another reference to the same image (same manifest digest),
	// e.g. a second tag. Optional: without it, removing a tag while another
	// is left is not checked.
	Alias string
	// Other is a reference to a different image (another digest).
	Other string
	// MissingTag is Reference's repository (or layout) with a tag it does
	// not have.
	MissingTag string
	// MissingImage is a repository, layout or archive that does not exist.
	MissingImage string
	// Malformed is a reference no source accepts; "" means
	// "UPPER/Case:tag" (upper case is not allowed in a repository).
	Malformed string
	// Local says the references are on this machine (layouts, archives):
	// CheckReference must then report MissingImage and MissingTag as
	// sdk.ErrNotFound. Registry references are checked without network
	// access, so their absence is found only by Pull.
	Local bool
}

func (f ImageFixture) malformed() string {
	if f.Malformed == "" {
		return "UPPER/Case:tag"
	}
	return f.Malformed
}

func (f ImageFixture) validate() error {
	var missing []string
	for _, r := range []struct{ name, v string }{
		{"Reference", f.Reference}, {"Other", f.Other}, {"MissingTag", f.MissingTag}, {"MissingImage", f.MissingImage},
	} {
		if r.v == "" {
			missing = append(missing, r.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the ImageFixture has no %s", strings.Join(missing, ", "))
	}
	return nil
}

// referenceCapability is the capability a reference needs, by its kind.
func referenceCapability(ref string) string {
	switch {
	case strings.HasPrefix(ref, "oci-layout:"):
		return "oci-layout"
	case strings.HasPrefix(ref, "docker-archive:"):
		return "docker-archive"
	}
	return "registry"
}

// ImageSourceConformance runs the ImageSource contract (image.proto) against
// a plugin, containerd-testsuite style: a table of named checks, each its
// own subtest on a fresh source from newSource, each dumping what it set up
// and every call it made when it fails, and skipping (naming the
// capability) what the plugin does not offer. The checks: pull with
// progress, a second pull from the cache, lookup by reference, digest and
// digest prefix, the image config, root disks, the image list's order,
// removal by tag and by digest, prune, concurrent pulls, a cancelled pull,
// the errors for missing images and tags, malformed references and
// uncached images, CheckReference, and (with the "commit" capability)
// Commit: a runnable image of the base plus a layer, whiteouts included,
// and refused bad layers and references that leave nothing behind.
//
// A third party runs it from a test of its own, with images it provides:
//
//	func TestConformance(t *testing.T) {
//		fx := sdktest.ImageFixture{Reference: "oci-layout:" + dir + ":v1", ...}
//		sdktest.ImageSourceConformance(t, func(t *testing.T) (sdk.ImageSource, string) {
//			state := t.TempDir()
//			c := sdktest.Serve(t, sdk.ServeConfig{Images: myplugin.New()}).Images
//			if err := c.Configure(context.Background(), &sdk.Config{StateDir: state, Home: t.TempDir()}); err != nil {
//				t.Fatal(err)
//			}
//			return c, state
//		}, fx)
//	}
//
// A single check runs with `go test -run 'TestConformance/RootDisk'`.
func ImageSourceConformance(t *testing.T, newSource NewImageSourceFunc, fx ImageFixture) {
	t.Helper()
	if err := fx.validate(); err != nil {
		t.Fatalf("image conformance: %v", err)
	}
	for _, c := range imageChecks() {
		t.Run(c.name, func(t *testing.T) {
			e := newImageEnv(t, newSource, fx)
			e.need(referenceCapability(fx.Reference))
			e.need(c.needs...)
			c.run(e)
		})
	}
}

// imageCheck is one named check of the suite.
type imageCheck struct {
	name string
	// needs are capabilities (their wire names, sdk.Capabilities.Strings)
	// without which the check is skipped.
	needs []string
	run   func(e *imageEnv)
}

func imageChecks() []imageCheck {
	return []imageCheck{
		{name: "Info", run: checkImageInfo},
		{name: "PullProgress", run: checkPullProgress},
		{name: "PullAgainIsCached", run: checkPullAgainIsCached},
		{name: "GetImage", run: checkGetImage},
		{name: "ImageConfig", run: checkImageConfig},
		{name: "RootDisk", needs: []string{"rootfs-ext4"}, run: checkRootDisk},
		{name: "ListImagesNewestFirst", run: checkListImages},
		{name: "RemoveTag", run: checkRemoveTag},
		{name: "RemoveDigest", run: checkRemoveDigest},
		{name: "PruneKeeps", needs: []string{"prune"}, run: checkPrune},
		{name: "ConcurrentPulls", run: checkConcurrentPulls},
		{name: "CancelledPull", run: checkCancelledPull},
		{name: "PullMissingImage", run: checkPullMissingImage},
		{name: "PullMissingTag", run: checkPullMissingTag},
		{name: "PullMalformedReference", run: checkPullMalformed},
		{name: "Uncached", run: checkUncached},
		{name: "CheckReference", needs: []string{"check-reference"}, run: checkCheckReference},
		{name: "Commit", needs: []string{"commit"}, run: checkCommit},
		{name: "CommitRefusesBadInput", needs: []string{"commit"}, run: checkCommitRefusesBadInput},
		{name: "ExportImage", needs: []string{"export-image", "oci-layout"}, run: checkExportImage},
	}
}

// imageEnv is one check's source, fixture and journal.
type imageEnv struct {
	t        *testing.T
	ctx      context.Context
	fx       ImageFixture
	src      *recordingSource
	info     sdk.Info
	caps     map[string]bool
	stateDir string
}

func newImageEnv(t *testing.T, newSource NewImageSourceFunc, fx ImageFixture) *imageEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	impl, stateDir := newSource(t)
	if impl == nil {
		t.Fatal("newSource returned a nil ImageSource")
	}
	e := &imageEnv{t: t, ctx: ctx, fx: fx, src: &recordingSource{impl: impl}, stateDir: stateDir}
	// Registered after newSource's own cleanups, so it runs before them:
	// the state directory is still there to list.
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(e.dump())
		}
	})
	info, err := impl.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	e.info = info
	e.caps = map[string]bool{}
	for _, c := range info.Capabilities.Strings() {
		e.caps[c] = true
	}
	return e
}

func (e *imageEnv) need(caps ...string) {
	e.t.Helper()
	for _, c := range caps {
		if !e.caps[c] {
			e.t.Skipf("the plugin does not offer %q (sdk.Capabilities)", c)
		}
	}
}

// dump is what a failed check set up: the fixture, the plugin, every call
// and what came back, and the files in the state directory.
func (e *imageEnv) dump() string {
	var b strings.Builder
	fmt.Fprintf(&b, "--- image conformance dump\nplugin: %s %s, capabilities %v\n", e.info.Name, e.info.Version, e.info.Capabilities.Strings())
	fmt.Fprintf(&b, "fixture:\n  Reference    %s\n  Alias        %s\n  Other        %s\n  MissingTag   %s\n  MissingImage %s\n  Malformed    %s\n  Local        %v\n  Config       %+v\n",
		e.fx.Reference, e.fx.Alias, e.fx.Other, e.fx.MissingTag, e.fx.MissingImage, e.fx.malformed(), e.fx.Local, e.fx.Config)
	b.WriteString("calls:\n")
	for _, l := range e.src.journal() {
		b.WriteString("  " + l + "\n")
	}
	if e.stateDir != "" {
		fmt.Fprintf(&b, "state directory %s:\n", e.stateDir)
		b.WriteString(listTree(e.stateDir, 200))
	}
	return b.String()
}

// listTree lists up to limit files under dir with their sizes.
func listTree(dir string, limit int) string {
	var b strings.Builder
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			fmt.Fprintf(&b, "  %s: %v\n", p, err)
			return nil
		}
		if n++; n > limit {
			b.WriteString("  ...\n")
			return fs.SkipAll
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			fmt.Fprintf(&b, "  %s/\n", rel)
			return nil
		}
		if fi, err := d.Info(); err == nil {
			fmt.Fprintf(&b, "  %s %d bytes\n", rel, fi.Size())
		}
		return nil
	})
	if err != nil {
		fmt.Fprintf(&b, "  %v\n", err)
	}
	return b.String()
}

// pulled is a pull's image and progress.
type pulled struct {
	img    sdk.Image
	events []sdk.PullEvent
}

// layers returns each layer's states in the order they were reported.
func (p pulled) layers() map[string][]sdk.LayerProgress {
	out := map[string][]sdk.LayerProgress{}
	for _, ev := range p.events {
		if l := ev.Layer; l != nil {
			out[l.Digest] = append(out[l.Digest], *l)
		}
	}
	return out
}

func (e *imageEnv) pull(ref string) pulled {
	e.t.Helper()
	var (
		mu  sync.Mutex
		out pulled
	)
	img, err := e.src.Pull(e.ctx, sdk.PullRequest{Reference: ref}, func(ev sdk.PullEvent) {
		mu.Lock()
		defer mu.Unlock()
		out.events = append(out.events, ev)
	})
	if err != nil {
		e.t.Fatalf("Pull %s: %v", ref, err)
	}
	out.img = img
	return out
}

func (e *imageEnv) get(image string) sdk.Image {
	e.t.Helper()
	img, err := e.src.GetImage(e.ctx, image)
	if err != nil {
		e.t.Fatalf("GetImage %s: %v", image, err)
	}
	return img
}

func (e *imageEnv) list() []sdk.Image {
	e.t.Helper()
	imgs, err := e.src.ListImages(e.ctx)
	if err != nil {
		e.t.Fatalf("ListImages: %v", err)
	}
	return imgs
}

func (e *imageEnv) wantEmpty(when string) {
	e.t.Helper()
	if imgs := e.list(); len(imgs) != 0 {
		e.t.Errorf("%s: ListImages = %v, want no images", when, digests(imgs))
	}
}

func (e *imageEnv) pruner() sdk.Pruner {
	e.t.Helper()
	p, ok := e.src.impl.(sdk.Pruner)
	if !ok {
		e.t.Fatalf(`the plugin offers "prune" but %T is no sdk.Pruner`, e.src.impl)
	}
	return recordingPruner{e.src, p}
}

func (e *imageEnv) checker() sdk.ReferenceChecker {
	e.t.Helper()
	c, ok := e.src.impl.(sdk.ReferenceChecker)
	if !ok {
		e.t.Fatalf(`the plugin offers "check-reference" but %T is no sdk.ReferenceChecker`, e.src.impl)
	}
	return recordingChecker{e.src, c}
}

func (e *imageEnv) exporter() sdk.ImageExporter {
	e.t.Helper()
	x, ok := e.src.impl.(sdk.ImageExporter)
	if !ok {
		e.t.Fatalf(`the plugin offers "export-image" but %T is no sdk.ImageExporter`, e.src.impl)
	}
	return recordingExporter{e.src, x}
}

// checkExportImage: a cached image exports as an OCI layout of its own
// files only, which pulls back (after the image was removed) as the same
// image; an existing destination is ErrAlreadyExists, an uncached image
// ErrNotFound.
func checkExportImage(e *imageEnv) {
	img := e.pull(e.fx.Reference).img
	x := e.exporter()
	dest := filepath.Join(e.t.TempDir(), "layout")
	if err := x.ExportImage(e.ctx, img.Digest, dest); err != nil {
		e.t.Fatalf("ExportImage: %v", err)
	}
	err := filepath.WalkDir(dest, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dest, p)
		switch {
		case d.IsDir() && (rel == "." || rel == "blobs" || rel == filepath.Join("blobs", "sha256")):
		case d.Type().IsRegular() && (rel == "oci-layout" || rel == "index.json" || filepath.Dir(rel) == filepath.Join("blobs", "sha256")):
		default:
			return fmt.Errorf("%s (%s) is not part of an OCI image layout", rel, d.Type())
		}
		return nil
	})
	if err != nil {
		e.t.Fatalf("exported layout: %v", err)
	}
	err = x.ExportImage(e.ctx, img.Digest, dest)
	wantKind(e.t, "ExportImage onto an existing directory", err, sdk.ErrAlreadyExists)
	if _, err := e.src.RemoveImage(e.ctx, img.Digest); err != nil {
		e.t.Fatalf("RemoveImage: %v", err)
	}
	err = x.ExportImage(e.ctx, img.Digest, filepath.Join(e.t.TempDir(), "gone"))
	wantKind(e.t, "ExportImage of an image no longer cached", err, sdk.ErrNotFound)
	back := e.pull("oci-layout:" + dest + "@" + img.Digest).img
	if back.Digest != img.Digest {
		e.t.Fatalf("the exported layout pulls as %s, want %s", back.Digest, img.Digest)
	}
	e.wantConfig("the image pulled back from its export", back.Config)
}

// wantKind fails unless err matches kind.
func wantKind(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Errorf("%s: got error %v, want one that matches %v", what, err, kind)
	}
}

func digests(imgs []sdk.Image) []string {
	out := make([]string, len(imgs))
	for i, img := range imgs {
		out[i] = img.Digest
	}
	return out
}

// isDigest reports whether d is "sha256:" and 64 lower-case hex digits.
func isDigest(d string) bool {
	hx, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hx) != 64 {
		return false
	}
	return strings.Trim(hx, "0123456789abcdef") == ""
}

// wantConfig compares what the suite checks of an image config.
func (e *imageEnv) wantConfig(what string, got sdk.ImageConfig) {
	e.t.Helper()
	want := e.fx.Config
	var diffs []string
	for _, f := range []struct {
		name      string
		got, want []string
	}{
		{"Entrypoint", got.Entrypoint, want.Entrypoint},
		{"Cmd", got.Cmd, want.Cmd},
		{"Env", got.Env, want.Env},
	} {
		if !slices.Equal(f.got, f.want) {
			diffs = append(diffs, fmt.Sprintf("%s %q, want %q", f.name, f.got, f.want))
		}
	}
	if got.WorkingDir != want.WorkingDir {
		diffs = append(diffs, fmt.Sprintf("WorkingDir %q, want %q", got.WorkingDir, want.WorkingDir))
	}
	if got.User != want.User {
		diffs = append(diffs, fmt.Sprintf("User %q, want %q", got.User, want.User))
	}
	if len(diffs) > 0 {
		e.t.Errorf("%s: the image config differs from the fixture's: %s", what, strings.Join(diffs, "; "))
	}
}

func checkImageInfo(e *imageEnv) {
	i := e.info
	if i.Name == "" || strings.Trim(i.Name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		e.t.Errorf("Info.Name %q: want a lower-case name of [a-z0-9-]", i.Name)
	}
	if len(i.ProtocolVersions) == 0 {
		e.t.Error("Info.ProtocolVersions is empty (Serve fills it in: is the plugin served through the sdk?)")
	}
	c := i.Capabilities
	if !c.Registry && !c.OCILayout && !c.DockerArchive {
		e.t.Error("the plugin offers no kind of reference (Registry, OCILayout or DockerArchive)")
	}
	if c.Prune {
		e.pruner()
	}
	if c.CheckReferences {
		e.checker()
	}
	if c.Commit {
		e.committer()
	}
}

func checkPullProgress(e *imageEnv) {
	p := e.pull(e.fx.Reference)
	img := p.img
	if !isDigest(img.Digest) {
		e.t.Errorf("the pulled image's digest %q is not sha256:<64 hex digits>", img.Digest)
	}
	if len(img.References) == 0 {
		e.t.Errorf("the pulled image has no references")
	}
	if img.Platform.OS == "" || img.Platform.Architecture == "" {
		e.t.Errorf("the pulled image's platform %q has no os or architecture", img.Platform)
	}
	if img.Size == 0 {
		e.t.Error("the pulled image's Size is 0, want the sum of its compressed layers")
	}
	if img.PulledAt.IsZero() {
		e.t.Error("the pulled image has no PulledAt")
	}
	layers := p.layers()
	if len(layers) == 0 {
		e.t.Fatalf("the pull reported no layer progress (%d events)", len(p.events))
	}
	for d, states := range layers {
		if d == "" {
			e.t.Errorf("a layer event has no digest: %+v", states)
			continue
		}
		last := states[len(states)-1]
		if last.State != sdk.LayerDone && last.State != sdk.LayerCached {
			e.t.Errorf("layer %s ended %v, want done or cached (states %v)", d, last.State, stateNames(states))
		}
		for _, s := range states {
			if s.Total > 0 && s.Done > s.Total {
				e.t.Errorf("layer %s: %d of %d bytes done", d, s.Done, s.Total)
			}
		}
		if last.State == sdk.LayerDone && last.Total > 0 && last.Done != last.Total {
			e.t.Errorf("layer %s done with %d of %d bytes", d, last.Done, last.Total)
		}
	}
	if got := e.get(e.fx.Reference); got.Digest != img.Digest {
		e.t.Errorf("after the pull GetImage(%s) = %s, Pull returned %s", e.fx.Reference, got.Digest, img.Digest)
	}
}

func stateNames(ls []sdk.LayerProgress) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.State.String()
	}
	return out
}

func checkPullAgainIsCached(e *imageEnv) {
	first := e.pull(e.fx.Reference)
	again := e.pull(e.fx.Reference)
	if again.img.Digest != first.img.Digest {
		e.t.Fatalf("the second pull returned %s, the first %s", again.img.Digest, first.img.Digest)
	}
	layers := again.layers()
	for d := range first.layers() {
		states, ok := layers[d]
		if !ok {
			e.t.Errorf("the second pull reported nothing for layer %s", d)
			continue
		}
		if last := states[len(states)-1]; last.State != sdk.LayerCached {
			e.t.Errorf("layer %s ended %v in the second pull, want cached", d, last.State)
		}
	}
	for d, states := range layers {
		for _, s := range states {
			if s.State != sdk.LayerWaiting && s.State != sdk.LayerCached {
				e.t.Errorf("the second pull downloaded layer %s: states %v, want only waiting and cached", d, stateNames(states))
				break
			}
		}
	}
	if n := len(e.list()); n != 1 {
		e.t.Errorf("after two pulls of one image ListImages has %d images", n)
	}
}

func checkGetImage(e *imageEnv) {
	img := e.pull(e.fx.Reference).img
	hx := strings.TrimPrefix(img.Digest, "sha256:")
	for _, name := range []string{e.fx.Reference, img.Digest, "sha256:" + hx[:12]} {
		got, err := e.src.GetImage(e.ctx, name)
		if err != nil {
			e.t.Errorf("GetImage(%q): %v", name, err)
			continue
		}
		if got.Digest != img.Digest || !slices.Equal(got.References, img.References) {
			e.t.Errorf("GetImage(%q) = %s %v, Pull returned %s %v", name, got.Digest, got.References, img.Digest, img.References)
		}
	}
}

func checkImageConfig(e *imageEnv) {
	img := e.pull(e.fx.Reference).img
	e.wantConfig("Pull", img.Config)
	e.wantConfig("GetImage", e.get(img.Digest).Config)
	for _, l := range e.list() {
		if l.Digest == img.Digest {
			e.wantConfig("ListImages", l.Config)
		}
	}
	other := e.pull(e.fx.Other).img
	if other.Digest == img.Digest {
		e.t.Errorf("the fixture's Other (%s) is the same image as Reference (%s)", e.fx.Other, img.Digest)
	}
}

func checkRootDisk(e *imageEnv) {
	img := e.pull(e.fx.Reference).img
	rd, err := e.src.RootDisk(e.ctx, e.fx.Reference)
	if err != nil {
		e.t.Fatalf("RootDisk %s: %v", e.fx.Reference, err)
	}
	if rd.Format != "raw" || rd.Filesystem != "ext4" {
		e.t.Errorf("RootDisk format %q filesystem %q, want raw ext4", rd.Format, rd.Filesystem)
	}
	if rd.Image.Digest != img.Digest {
		e.t.Errorf("RootDisk is of image %s, want %s", rd.Image.Digest, img.Digest)
	}
	e.wantConfig("RootDisk", rd.Image.Config)
	if !filepath.IsAbs(rd.Path) {
		e.t.Fatalf("RootDisk path %q is not absolute", rd.Path)
	}
	fi, err := os.Stat(rd.Path)
	if err != nil {
		e.t.Fatalf("the root disk: %v", err)
	}
	if !fi.Mode().IsRegular() || uint64(fi.Size()) != rd.Size || rd.Size == 0 {
		e.t.Errorf("the root disk %s is a %v of %d bytes; RootDisk reported %d bytes", rd.Path, fi.Mode().Type(), fi.Size(), rd.Size)
	}
	if err := checkExt4(rd.Path, fi.Size()); err != nil {
		e.t.Errorf("the root disk: %v", err)
	}
	again, err := e.src.RootDisk(e.ctx, img.Digest)
	if err != nil {
		e.t.Fatalf("RootDisk %s a second time: %v", img.Digest, err)
	}
	if again.Path != rd.Path || again.Size != rd.Size {
		e.t.Errorf("the second RootDisk is %s (%d bytes), the first was %s (%d bytes)", again.Path, again.Size, rd.Path, rd.Size)
	}
}

// checkExt4 reads an ext4 superblock at offset 1024 of a raw file: the
// magic number, and a filesystem that fits in the file.
func checkExt4(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the superblock of %s: %w", path, err)
	}
	if magic := binary.LittleEndian.Uint16(sb[0x38:]); magic != 0xef53 {
		return fmt.Errorf("%s has no ext4 superblock (magic %#x at byte 1080, want 0xef53)", path, magic)
	}
	blocks := uint64(binary.LittleEndian.Uint32(sb[0x04:]))
	if binary.LittleEndian.Uint32(sb[0x60:])&0x80 != 0 { // INCOMPAT_64BIT
		blocks |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	logBlock := binary.LittleEndian.Uint32(sb[0x18:])
	if logBlock > 6 {
		return fmt.Errorf("%s: ext4 block size 2^%d KiB is not plausible", path, logBlock)
	}
	if fsSize := blocks * (1024 << logBlock); fsSize == 0 || fsSize > uint64(size) {
		return fmt.Errorf("%s: the ext4 filesystem is %d bytes, the file %d", path, fsSize, size)
	}
	return nil
}

func checkListImages(e *imageEnv) {
	e.wantEmpty("a fresh cache")
	first := e.pull(e.fx.Reference).img
	// Distinct pull times even where the clock is coarse.
	time.Sleep(10 * time.Millisecond)
	second := e.pull(e.fx.Other).img
	list := e.list()
	if got, want := digests(list), []string{second.Digest, first.Digest}; !slices.Equal(got, want) {
		e.t.Fatalf("ListImages = %v, want %v (the last pulled first)", got, want)
	}
	if list[0].PulledAt.Before(list[1].PulledAt) {
		e.t.Errorf("ListImages: PulledAt %v before %v, want newest first", list[0].PulledAt, list[1].PulledAt)
	}
	e.wantConfig("ListImages", list[1].Config)
}

func checkRemoveTag(e *imageEnv) {
	img := e.pull(e.fx.Reference).img
	if e.fx.Alias != "" {
		alias := e.pull(e.fx.Alias).img
		if alias.Digest != img.Digest {
			e.t.Fatalf("the fixture's Alias %s is image %s, Reference %s is %s", e.fx.Alias, alias.Digest, e.fx.Reference, img.Digest)
		}
		rm, err := e.src.RemoveImage(e.ctx, e.fx.Reference)
		if err != nil {
			e.t.Fatalf("RemoveImage %s: %v", e.fx.Reference, err)
		}
		if len(rm.Images) != 0 {
			e.t.Errorf("removing a tag while another is left removed images %v", rm.Images)
		}
		_, err = e.src.GetImage(e.ctx, e.fx.Reference)
		wantKind(e.t, "GetImage of the removed tag", err, sdk.ErrNotFound)
		left := e.get(e.fx.Alias)
		if left.Digest != img.Digest || len(left.References) != len(alias.References)-1 {
			e.t.Errorf("after removing %s the image has references %v (before: %v)", e.fx.Reference, left.References, alias.References)
		}
		if got := e.get(img.Digest); got.Digest != img.Digest {
			e.t.Errorf("GetImage by digest after removing a tag: %s", got.Digest)
		}
	}
	last := e.fx.Reference
	if e.fx.Alias != "" {
		last = e.fx.Alias
	}
	rm, err := e.src.RemoveImage(e.ctx, last)
	if err != nil {
		e.t.Fatalf("RemoveImage %s: %v", last, err)
	}
	if !slices.Equal(rm.Images, []string{img.Digest}) {
		e.t.Errorf("removing the last tag removed %v, want [%s]", rm.Images, img.Digest)
	}
	_, err = e.src.GetImage(e.ctx, img.Digest)
	wantKind(e.t, "GetImage of an image whose last tag was removed", err, sdk.ErrNotFound)
	e.wantEmpty("after removing the last tag")
}

func checkRemoveDigest(e *imageEnv) {
	img := e.pull(e.fx.Reference).img
	refs := []string{e.fx.Reference}
	if e.fx.Alias != "" {
		e.pull(e.fx.Alias)
		refs = append(refs, e.fx.Alias)
	}
	other := e.pull(e.fx.Other).img
	rm, err := e.src.RemoveImage(e.ctx, img.Digest)
	if err != nil {
		e.t.Fatalf("RemoveImage %s: %v", img.Digest, err)
	}
	if !slices.Equal(rm.Images, []string{img.Digest}) {
		e.t.Errorf("RemoveImage by digest removed %v, want [%s]", rm.Images, img.Digest)
	}
	for _, r := range append(refs, img.Digest) {
		_, err := e.src.GetImage(e.ctx, r)
		wantKind(e.t, "GetImage "+r+" of an image removed by digest", err, sdk.ErrNotFound)
	}
	if got := digests(e.list()); !slices.Equal(got, []string{other.Digest}) {
		e.t.Errorf("after RemoveImage by digest ListImages = %v, want only the other image %s", got, other.Digest)
	}
	_, err = e.src.RemoveImage(e.ctx, img.Digest)
	wantKind(e.t, "RemoveImage of a removed image", err, sdk.ErrNotFound)
	if got := e.get(other.Digest); got.Digest != other.Digest {
		e.t.Errorf("the other image: %s", got.Digest)
	}
}

func checkPrune(e *imageEnv) {
	img := e.pull(e.fx.Reference).img
	other := e.pull(e.fx.Other).img
	p := e.pruner()
	rm, err := p.Prune(e.ctx, sdk.PruneRequest{})
	if err != nil {
		e.t.Fatalf("Prune: %v", err)
	}
	if len(rm.Images) != 0 || len(e.list()) != 2 {
		e.t.Errorf("Prune without All removed tagged images: %v", rm.Images)
	}
	rm, err = p.Prune(e.ctx, sdk.PruneRequest{All: true, Keep: []string{img.Digest}})
	if err != nil {
		e.t.Fatalf("Prune all, keeping %s: %v", img.Digest, err)
	}
	if !slices.Equal(rm.Images, []string{other.Digest}) {
		e.t.Errorf("Prune all keeping %s removed %v, want [%s]", img.Digest, rm.Images, other.Digest)
	}
	if got := digests(e.list()); !slices.Equal(got, []string{img.Digest}) {
		e.t.Fatalf("after Prune ListImages = %v, want the kept %s", got, img.Digest)
	}
	// What was kept is whole: its blobs were not pruned.
	e.wantConfig("GetImage of the kept image", e.get(e.fx.Reference).Config)
	if e.caps["rootfs-ext4"] {
		if _, err := e.src.RootDisk(e.ctx, img.Digest); err != nil {
			e.t.Errorf("RootDisk of the kept image: %v", err)
		}
	}
	if again := e.pull(e.fx.Reference); again.img.Digest != img.Digest {
		e.t.Errorf("pull of the kept image: %s", again.img.Digest)
	} else {
		for d, states := range again.layers() {
			if states[len(states)-1].State != sdk.LayerCached {
				e.t.Errorf("Prune removed layer %s of the kept image (it was downloaded again)", d)
			}
		}
	}
	rm, err = p.Prune(e.ctx, sdk.PruneRequest{All: true})
	if err != nil {
		e.t.Fatalf("Prune all: %v", err)
	}
	if !slices.Equal(rm.Images, []string{img.Digest}) {
		e.t.Errorf("Prune all removed %v, want [%s]", rm.Images, img.Digest)
	}
	e.wantEmpty("after Prune all")
}

func checkConcurrentPulls(e *imageEnv) {
	const n = 4
	var wg sync.WaitGroup
	got := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, err := e.src.Pull(e.ctx, sdk.PullRequest{Reference: e.fx.Reference}, nil)
			got[i], errs[i] = img.Digest, err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			e.t.Errorf("concurrent pull %d: %v", i, err)
		}
	}
	if e.t.Failed() {
		return
	}
	for _, d := range got[1:] {
		if d != got[0] {
			e.t.Fatalf("concurrent pulls of one reference returned %v", got)
		}
	}
	if l := e.list(); len(l) != 1 {
		e.t.Errorf("after concurrent pulls of one image ListImages = %v", digests(l))
	}
	if !e.caps["rootfs-ext4"] {
		return
	}
	paths := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rd, err := e.src.RootDisk(e.ctx, got[0])
			paths[i], errs[i] = rd.Path, err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			e.t.Errorf("concurrent RootDisk %d: %v", i, err)
		}
	}
	for _, p := range paths[1:] {
		if p != paths[0] {
			e.t.Errorf("concurrent RootDisk calls returned %v, want one disk", paths)
			break
		}
	}
}

// checkCancelledPull cancels a pull at its first progress event: whether
// it stops or had already finished, nothing is left half-visible and the
// next pull completes.
func checkCancelledPull(e *imageEnv) {
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	img, err := e.src.Pull(ctx, sdk.PullRequest{Reference: e.fx.Reference}, func(sdk.PullEvent) { cancel() })
	if err == nil {
		// The pull won the race; what it returned must be usable.
		if got := e.get(img.Digest); got.Digest != img.Digest {
			e.t.Errorf("GetImage of a finished pull: %s", got.Digest)
		}
	} else {
		e.wantEmpty("after a cancelled pull")
		_, gerr := e.src.GetImage(e.ctx, e.fx.Reference)
		wantKind(e.t, "GetImage after a cancelled pull", gerr, sdk.ErrNotFound)
	}
	full := e.pull(e.fx.Reference).img
	e.wantConfig("the pull after a cancelled one", full.Config)
	if e.caps["rootfs-ext4"] {
		rd, err := e.src.RootDisk(e.ctx, full.Digest)
		if err != nil {
			e.t.Fatalf("RootDisk after a cancelled pull: %v", err)
		}
		fi, err := os.Stat(rd.Path)
		if err != nil {
			e.t.Fatal(err)
		}
		if err := checkExt4(rd.Path, fi.Size()); err != nil {
			e.t.Error(err)
		}
	}
}

func (e *imageEnv) pullFails(what, ref string, kind error) {
	e.t.Helper()
	_, err := e.src.Pull(e.ctx, sdk.PullRequest{Reference: ref}, nil)
	wantKind(e.t, what, err, kind)
	e.wantEmpty("after " + what)
}

func checkPullMissingImage(e *imageEnv) {
	e.pullFails("Pull of a missing image "+e.fx.MissingImage, e.fx.MissingImage, sdk.ErrNotFound)
}

func checkPullMissingTag(e *imageEnv) {
	e.pullFails("Pull of a missing tag "+e.fx.MissingTag, e.fx.MissingTag, sdk.ErrNotFound)
}

func checkPullMalformed(e *imageEnv) {
	e.pullFails(fmt.Sprintf("Pull of the malformed reference %q", e.fx.malformed()), e.fx.malformed(), sdk.ErrInvalidArgument)
	e.pullFails("Pull of an empty reference", "", sdk.ErrInvalidArgument)
}

func checkUncached(e *imageEnv) {
	unknown := "sha256:" + strings.Repeat("0", 64)
	for _, name := range []string{e.fx.Reference, unknown} {
		_, err := e.src.GetImage(e.ctx, name)
		wantKind(e.t, "GetImage of the uncached "+name, err, sdk.ErrNotFound)
		_, err = e.src.RootDisk(e.ctx, name)
		wantKind(e.t, "RootDisk of the uncached "+name, err, sdk.ErrNotFound)
		_, err = e.src.RemoveImage(e.ctx, name)
		wantKind(e.t, "RemoveImage of the uncached "+name, err, sdk.ErrNotFound)
	}
	// A cached image does not make another one found.
	e.pull(e.fx.Other)
	_, err := e.src.GetImage(e.ctx, e.fx.Reference)
	wantKind(e.t, "GetImage of the uncached "+e.fx.Reference+" with another image cached", err, sdk.ErrNotFound)
	_, err = e.src.RootDisk(e.ctx, e.fx.Reference)
	wantKind(e.t, "RootDisk of the uncached "+e.fx.Reference+" with another image cached", err, sdk.ErrNotFound)
}

func checkCheckReference(e *imageEnv) {
	c := e.checker()
	canonical := map[string]string{}
	for _, ref := range []string{e.fx.Reference, e.fx.Other} {
		got, err := c.CheckReference(e.ctx, sdk.PullRequest{Reference: ref})
		if err != nil {
			e.t.Errorf("CheckReference %s: %v", ref, err)
			continue
		}
		if got == "" {
			e.t.Errorf("CheckReference %s returned no canonical reference", ref)
		}
		canonical[ref] = got
	}
	_, err := c.CheckReference(e.ctx, sdk.PullRequest{Reference: e.fx.malformed()})
	wantKind(e.t, "CheckReference of the malformed "+e.fx.malformed(), err, sdk.ErrInvalidArgument)
	_, err = c.CheckReference(e.ctx, sdk.PullRequest{Reference: ""})
	wantKind(e.t, "CheckReference of an empty reference", err, sdk.ErrInvalidArgument)
	_, err = c.CheckReference(e.ctx, sdk.PullRequest{Reference: e.fx.Reference, Platform: &sdk.Platform{OS: "linux"}})
	wantKind(e.t, "CheckReference with a platform without architecture", err, sdk.ErrInvalidArgument)
	if e.fx.Local {
		for _, ref := range []string{e.fx.MissingImage, e.fx.MissingTag} {
			_, err := c.CheckReference(e.ctx, sdk.PullRequest{Reference: ref})
			wantKind(e.t, "CheckReference of the missing "+ref, err, sdk.ErrNotFound)
		}
	}
	e.wantEmpty("after CheckReference")
	_, err = e.src.GetImage(e.ctx, e.fx.Reference)
	wantKind(e.t, "GetImage after CheckReference", err, sdk.ErrNotFound)
	// The canonical form is the reference a pull records.
	if want, ok := canonical[e.fx.Reference]; ok {
		img := e.pull(e.fx.Reference).img
		if !slices.Contains(img.References, want) {
			e.t.Errorf("CheckReference %s returned %s, but the pulled image's references are %v", e.fx.Reference, want, img.References)
		}
	}
}

// recordingSource passes calls on to the plugin and keeps a line per call
// and its outcome, for the failure dump.
type recordingSource struct {
	impl sdk.ImageSource
	mu   sync.Mutex
	log  []string
}

func (r *recordingSource) record(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

func (r *recordingSource) journal() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

func outcome(err error, ok string) string {
	if err != nil {
		return fmt.Sprintf("error: %v", err)
	}
	return ok
}

func imageLine(img sdk.Image) string {
	return fmt.Sprintf("%s refs=%v platform=%s size=%d", img.Digest, img.References, img.Platform, img.Size)
}

func (r *recordingSource) Info(ctx context.Context) (sdk.Info, error) { return r.impl.Info(ctx) }

func (r *recordingSource) Configure(ctx context.Context, cfg *sdk.Config) error {
	return r.impl.Configure(ctx, cfg)
}

func (r *recordingSource) Pull(ctx context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
	var (
		mu     sync.Mutex
		events []string
	)
	img, err := r.impl.Pull(ctx, req, func(ev sdk.PullEvent) {
		mu.Lock()
		if l := ev.Layer; l != nil {
			events = append(events, fmt.Sprintf("%s %s %d/%d", short(l.Digest), l.State, l.Done, l.Total))
		} else {
			events = append(events, fmt.Sprintf("status %q", ev.Status))
		}
		mu.Unlock()
		if progress != nil {
			progress(ev)
		}
	})
	mu.Lock()
	defer mu.Unlock()
	r.record("Pull(%q, platform %v) -> %s; events: %s", req.Reference, req.Platform, outcome(err, imageLine(img)), strings.Join(events, ", "))
	return img, err
}

func short(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

func (r *recordingSource) GetImage(ctx context.Context, image string) (sdk.Image, error) {
	img, err := r.impl.GetImage(ctx, image)
	r.record("GetImage(%q) -> %s", image, outcome(err, imageLine(img)))
	return img, err
}

func (r *recordingSource) RootDisk(ctx context.Context, image string) (sdk.RootDisk, error) {
	rd, err := r.impl.RootDisk(ctx, image)
	r.record("RootDisk(%q) -> %s", image, outcome(err, fmt.Sprintf("%s %s/%s %d bytes of %s", rd.Path, rd.Format, rd.Filesystem, rd.Size, rd.Image.Digest)))
	return rd, err
}

func (r *recordingSource) ListImages(ctx context.Context) ([]sdk.Image, error) {
	imgs, err := r.impl.ListImages(ctx)
	lines := make([]string, len(imgs))
	for i, img := range imgs {
		lines[i] = fmt.Sprintf("%s pulled %s", imageLine(img), img.PulledAt.Format(time.RFC3339Nano))
	}
	r.record("ListImages() -> %s", outcome(err, "["+strings.Join(lines, "; ")+"]"))
	return imgs, err
}

func (r *recordingSource) RemoveImage(ctx context.Context, image string) (sdk.Removed, error) {
	rm, err := r.impl.RemoveImage(ctx, image)
	r.record("RemoveImage(%q) -> %s", image, outcome(err, fmt.Sprintf("removed %v, %d bytes", rm.Images, rm.Reclaimed)))
	return rm, err
}

type recordingPruner struct {
	r *recordingSource
	p sdk.Pruner
}

func (p recordingPruner) Prune(ctx context.Context, req sdk.PruneRequest) (sdk.Removed, error) {
	rm, err := p.p.Prune(ctx, req)
	p.r.record("Prune(keep %v, all %v) -> %s", req.Keep, req.All, outcome(err, fmt.Sprintf("removed %v, %d bytes", rm.Images, rm.Reclaimed)))
	return rm, err
}

type recordingChecker struct {
	r *recordingSource
	c sdk.ReferenceChecker
}

func (c recordingChecker) CheckReference(ctx context.Context, req sdk.PullRequest) (string, error) {
	canonical, err := c.c.CheckReference(ctx, req)
	c.r.record("CheckReference(%q, platform %v) -> %s", req.Reference, req.Platform, outcome(err, canonical))
	return canonical, err
}

type recordingExporter struct {
	r *recordingSource
	x sdk.ImageExporter
}

func (x recordingExporter) ExportImage(ctx context.Context, digest, dest string) error {
	err := x.x.ExportImage(ctx, digest, dest)
	x.r.record("ExportImage(%q, %q) -> %s", digest, dest, outcome(err, "ok"))
	return err
}

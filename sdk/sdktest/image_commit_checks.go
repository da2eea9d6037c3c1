package sdktest

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/boxctl/boxctl/sdk"
)

// commitReference is where the Commit checks tag what they commit: a
// registry name in canonical form, so every source spells it the same way.
const commitReference = "registry.invalid/sdktest/committed:v1"

// commitFile is what the committed layer adds.
const (
	commitFile    = "sdktest-commit/added"
	commitContent = "added by the conformance suite\n"
)

// layerTar writes an uncompressed layer tar of entries (name ending in "/"
// for a directory; "" content for an empty file) into the check's temp dir.
func (e *imageEnv) layerTar(entries ...[2]string) string {
	e.t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, en := range entries {
		hdr := &tar.Header{Name: en[0], Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(en[1]))}
		if strings.HasSuffix(en[0], "/") {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			e.t.Fatal(err)
		}
		if _, err := tw.Write([]byte(en[1])); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		e.t.Fatal(err)
	}
	p := filepath.Join(e.t.TempDir(), "layer.tar")
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *imageEnv) committer() sdk.Committer {
	e.t.Helper()
	c, ok := e.src.impl.(sdk.Committer)
	if !ok {
		e.t.Fatalf(`the plugin offers "commit" but %T is no sdk.Committer`, e.src.impl)
	}
	return recordingCommitter{e.src, c}
}

// ext4File reads a file of an ext4 image with e2fsprogs' debugfs; ok is
// false if it does not exist.
func (e *imageEnv) ext4File(image, p string) (string, bool) {
	e.t.Helper()
	if _, err := exec.LookPath("debugfs"); err != nil {
		e.t.Fatalf("debugfs not found: the Commit check reads root disks with it (apt-get install e2fsprogs)")
	}
	var out, errb bytes.Buffer
	cmd := exec.Command("debugfs", "-R", "cat /"+p, image)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("debugfs cat /%s %s: %v: %s", p, image, err, errb.String())
	}
	if strings.Contains(errb.String(), "File not found") {
		return "", false
	}
	return out.String(), true
}

func checkCommit(e *imageEnv) {
	base := e.pull(e.fx.Reference).img
	c := e.committer()
	img, err := c.Commit(e.ctx, sdk.CommitRequest{
		Base:      base.Digest,
		LayerPath: e.layerTar([2]string{"sdktest-commit/", ""}, [2]string{commitFile, commitContent}, [2]string{".wh.sdktest-never-there", ""}),
		Reference: commitReference,
		Config:    &sdk.ImageConfig{Cmd: []string{"echo", "committed"}},
		Comment:   "conformance", Author: "sdktest",
	})
	if err != nil {
		e.t.Fatalf("Commit: %v", err)
	}
	if !isDigest(img.Digest) || img.Digest == base.Digest {
		e.t.Errorf("the committed image's digest %q: want a new sha256 digest (the base is %s)", img.Digest, base.Digest)
	}
	if !slices.Contains(img.References, commitReference) {
		e.t.Errorf("the committed image's references %v lack %s", img.References, commitReference)
	}
	if img.Platform != base.Platform {
		e.t.Errorf("the committed image is for %s, its base for %s", img.Platform, base.Platform)
	}
	if img.Size <= base.Size {
		e.t.Errorf("the committed image weighs %d bytes, its base %d: the new layer is not counted", img.Size, base.Size)
	}
	want := e.fx.Config
	want.Cmd = []string{"echo", "committed"}
	saved := e.fx.Config
	e.fx.Config = want
	e.wantConfig("the committed image (Cmd changed, the rest kept)", img.Config)
	e.wantConfig("GetImage of the committed reference", e.get(commitReference).Config)
	e.fx.Config = saved
	if got := e.get(commitReference); got.Digest != img.Digest {
		e.t.Errorf("GetImage %s = %s, want the committed %s", commitReference, got.Digest, img.Digest)
	}
	e.wantConfig("the base after the commit", e.get(base.Digest).Config)
	if got := digests(e.list()); !slices.Equal(got, []string{img.Digest, base.Digest}) {
		e.t.Errorf("ListImages = %v, want the committed image, then its base", got)
	}
	if e.caps["rootfs-ext4"] {
		rd, err := e.src.RootDisk(e.ctx, img.Digest)
		if err != nil {
			e.t.Fatalf("RootDisk of the committed image: %v", err)
		}
		if err := checkExt4(rd.Path, int64(rd.Size)); err != nil {
			e.t.Errorf("the committed image's root disk: %v", err)
		}
		if got, ok := e.ext4File(rd.Path, commitFile); !ok || got != commitContent {
			e.t.Errorf("/%s in the committed image's root disk: %q (present %v), want %q", commitFile, got, ok, commitContent)
		}
		brd, err := e.src.RootDisk(e.ctx, base.Digest)
		if err != nil {
			e.t.Fatalf("RootDisk of the base: %v", err)
		}
		if _, ok := e.ext4File(brd.Path, commitFile); ok {
			e.t.Errorf("the base's root disk has /%s: the commit changed its base", commitFile)
		}
	}
	// A commit on the commit, to the same reference, moves the tag.
	next, err := c.Commit(e.ctx, sdk.CommitRequest{Base: img.Digest, LayerPath: e.layerTar([2]string{".wh.sdktest-commit", ""}), Reference: commitReference})
	if err != nil {
		e.t.Fatalf("Commit onto the committed image: %v", err)
	}
	if got := e.get(commitReference); got.Digest != next.Digest || next.Digest == img.Digest {
		e.t.Errorf("after a second commit to %s it names %s; want the second commit %s", commitReference, got.Digest, next.Digest)
	}
	if e.caps["rootfs-ext4"] {
		rd, err := e.src.RootDisk(e.ctx, next.Digest)
		if err != nil {
			e.t.Fatalf("RootDisk of the second commit: %v", err)
		}
		if _, ok := e.ext4File(rd.Path, commitFile); ok {
			e.t.Errorf("the second commit deleted /sdktest-commit (a whiteout), but its root disk still has /%s", commitFile)
		}
	}
}

func checkCommitRefusesBadInput(e *imageEnv) {
	base := e.pull(e.fx.Reference).img
	c := e.committer()
	good := e.layerTar([2]string{commitFile, commitContent})
	junk := filepath.Join(e.t.TempDir(), "junk")
	if err := os.WriteFile(junk, bytes.Repeat([]byte("not a tar archive "), 100), 0o600); err != nil {
		e.t.Fatal(err)
	}
	for _, tc := range []struct {
		what string
		req  sdk.CommitRequest
		kind error
	}{
		{"Commit onto an uncached base", sdk.CommitRequest{Base: "sha256:" + strings.Repeat("0", 64), LayerPath: good, Reference: commitReference}, sdk.ErrNotFound},
		{"Commit to a malformed reference", sdk.CommitRequest{Base: base.Digest, LayerPath: good, Reference: e.fx.malformed()}, sdk.ErrInvalidArgument},
		{"Commit of a layer that is not a tar", sdk.CommitRequest{Base: base.Digest, LayerPath: junk, Reference: commitReference}, sdk.ErrInvalidArgument},
		{"Commit of a layer with a ../ entry", sdk.CommitRequest{Base: base.Digest, LayerPath: e.layerTar([2]string{"../escaped", "x"}), Reference: commitReference}, sdk.ErrInvalidArgument},
	} {
		_, err := c.Commit(e.ctx, tc.req)
		wantKind(e.t, tc.what, err, tc.kind)
	}
	if got := digests(e.list()); !slices.Equal(got, []string{base.Digest}) {
		e.t.Errorf("after refused commits ListImages = %v, want only the base %s", got, base.Digest)
	}
	_, err := e.src.GetImage(e.ctx, commitReference)
	wantKind(e.t, "GetImage of a reference only refused commits named", err, sdk.ErrNotFound)
}

type recordingCommitter struct {
	r *recordingSource
	c sdk.Committer
}

func (c recordingCommitter) Commit(ctx context.Context, req sdk.CommitRequest) (sdk.Image, error) {
	img, err := c.c.Commit(ctx, req)
	c.r.record("Commit(base %s, layer %s, reference %q, config %v) -> %s", req.Base, req.LayerPath, req.Reference, req.Config != nil, outcome(err, imageLine(img)))
	return img, err
}

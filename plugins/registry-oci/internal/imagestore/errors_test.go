package imagestore_test

import (
	"crypto/rand"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

func TestUnknownImage(t *testing.T) {
	r := newRegistry(t)
	reg(t, r, "exists/app:1", simpleImage(t, "x"))
	s := openStore(t)
	_, err := s.Pull(ctx(t), r.Ref("nope/missing:1"), imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrNotFound) {
		t.Fatalf("%v, want ErrNotFound", err)
	}
	mustContain(t, err, "nope/missing", r.Host, "does not exist")
	assertNothingCached(t, s)
}

func TestMissingTag(t *testing.T) {
	r := newRegistry(t)
	reg(t, r, "exists/app:1", simpleImage(t, "x"))
	s := openStore(t)
	_, err := s.Pull(ctx(t), r.Ref("exists/app:2"), imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrNotFound) {
		t.Fatalf("%v, want ErrNotFound", err)
	}
	mustContain(t, err, `tag "2"`, "exists/app", r.Host)
	assertNothingCached(t, s)
}

func TestUnauthorized(t *testing.T) {
	r := newRegistry(t)
	ref := reg(t, r, "private/app:1", simpleImage(t, "secret"))
	r.RequireBasicAuth("alice", "s3cret")
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no ambient credentials
	t.Setenv("HOME", t.TempDir())

	s := openStore(t)
	_, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrUnauthorized) {
		t.Fatalf("%v, want ErrUnauthorized", err)
	}
	mustContain(t, err, r.Host, "docker login "+r.Host, "credentials")
	assertNothingCached(t, s)

	// Wrong explicit credentials are refused too.
	bad := openStore(t, imagestore.WithRegistryConfig(imagestore.RegistryConfig{
		Credentials: map[string]imagestore.Credential{r.Host: {Username: "alice", Password: "wrong"}},
	}))
	if _, err := bad.Pull(ctx(t), ref, imagestore.PullOptions{}); !errorsIs(err, imagestore.ErrUnauthorized) {
		t.Errorf("wrong password: %v", err)
	}

	// Explicit credentials.
	good := openStore(t, imagestore.WithRegistryConfig(imagestore.RegistryConfig{
		Credentials: map[string]imagestore.Credential{r.Host: {Username: "alice", Password: "s3cret"}},
	}))
	if _, err := good.Pull(ctx(t), ref, imagestore.PullOptions{}); err != nil {
		t.Errorf("explicit credentials: %v", err)
	}

	// Docker's config.json, through the default keychain.
	cfgDir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(`{"auths":{"`+r.Host+`":{"auth":"`+auth+`"}}}`), 0o600)
	t.Setenv("DOCKER_CONFIG", cfgDir)
	docker := openStore(t)
	if _, err := docker.Pull(ctx(t), ref, imagestore.PullOptions{}); err != nil {
		t.Errorf("docker config credentials: %v", err)
	}
	// ... unless the keychain is disabled.
	nokc := openStore(t, imagestore.WithRegistryConfig(imagestore.RegistryConfig{NoDefaultKeychain: true}))
	if _, err := nokc.Pull(ctx(t), ref, imagestore.PullOptions{}); !errorsIs(err, imagestore.ErrUnauthorized) {
		t.Errorf("keychain disabled: %v", err)
	}
}

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestUnreachableRegistry(t *testing.T) {
	host := closedPort(t)
	s := openStore(t)
	_, err := s.Pull(ctx(t), host+"/some/app:1", imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrUnreachable) {
		t.Fatalf("%v, want ErrUnreachable", err)
	}
	mustContain(t, err, "cannot reach registry "+host, "is there a network?")
	assertNothingCached(t, s)
}

func TestDigestMismatch(t *testing.T) {
	r := newRegistry(t)
	good := ti.NewLayer([]ti.Entry{ti.File("good", "g")}, ti.Gzip)
	evil := ti.NewLayer([]ti.Entry{ti.File("evil", "e")}, ti.Gzip)
	ref := reg(t, r, "hostile/app:1", mustImage(t, []*ti.Layer{good, evil}, v1.Config{}, "linux/amd64"))
	r.CorruptBlob(evil.MustDigest())
	s := openStore(t)
	_, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrDigestMismatch) {
		t.Fatalf("%v, want ErrDigestMismatch", err)
	}
	mustContain(t, err, evil.MustDigest().String(), "nothing was cached")
	assertNothingCached(t, s, evil.MustDigest())
}

func TestManifestDigestMismatch(t *testing.T) {
	r := newRegistry(t)
	img, other := simpleImage(t, "m"), simpleImage(t, "other")
	reg(t, r, "m/app:1", img)
	reg(t, r, "m/app:2", other)
	s := openStore(t)
	// Pinned by digest, yet the registry answers with another manifest.
	otherManifest, _ := other.RawManifest()
	r.OverrideManifest("m/app", digestOf(t, img), otherManifest)
	_, err := s.Pull(ctx(t), r.Ref("m/app@"+digestOf(t, img)), imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrDigestMismatch) {
		t.Fatalf("%v, want ErrDigestMismatch", err)
	}
	mustContain(t, err, digestOf(t, img), digestOf(t, other))
	assertNothingCached(t, s)
	// An unknown digest is not found.
	_, err = s.Pull(ctx(t), r.Ref("m/app@sha256:"+strings.Repeat("1", 64)), imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrNotFound) {
		t.Fatalf("%v, want ErrNotFound", err)
	}
}

func TestBadLayers(t *testing.T) {
	junk := make([]byte, 4000)
	rand.Read(junk)
	for _, tc := range []struct {
		name  string
		layer *ti.Layer
		err   error
		want  []string
	}{
		{"dotdot entry", ti.NewLayer([]ti.Entry{ti.File("ok", "1"), ti.File("../../etc/evil", "x")}, ti.Gzip),
			imagestore.ErrBadImage, []string{"../../etc/evil", "escapes the image root"}},
		{"dotdot inside", ti.NewLayer([]ti.Entry{ti.File("a/../../b", "x")}, ti.Zstd),
			imagestore.ErrBadImage, []string{"a/../../b", "escapes"}},
		{"absolute name escaping after cleaning", ti.NewLayer([]ti.Entry{ti.File("/../etc/x", "x")}, ti.Gzip),
			imagestore.ErrBadImage, []string{"/../etc/x", "escapes"}},
		{"hardlink escaping", ti.NewLayer([]ti.Entry{ti.Hardlink("x", "../../etc/shadow")}, ti.Uncompressed),
			imagestore.ErrBadImage, []string{"hardlink target", "escapes"}},
		{"not a tar", ti.RawLayer(junk, types.OCIUncompressedLayer),
			imagestore.ErrBadImage, []string{"not a tar archive"}},
		{"gzip of not a tar", ti.FromTar(junk, ti.Gzip),
			imagestore.ErrBadImage, []string{"not a tar archive", "gzip"}},
		{"truncated gzip", ti.RawLayer(ti.FromTar(ti.Tar([]ti.Entry{ti.File("f", strings.Repeat("x", 100000))}), ti.Gzip).Blob()[:200], types.OCILayer),
			imagestore.ErrBadImage, []string{"bad layer"}},
		{"xz layer", ti.RawLayer([]byte("\xfd7zXZ\x00rest"), types.OCILayer),
			imagestore.ErrUnsupported, []string{"xz"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRegistry(t)
			base := ti.NewLayer([]ti.Entry{ti.File("base", "b")}, ti.Gzip)
			ref := reg(t, r, "bad/app:1", mustImage(t, []*ti.Layer{base, tc.layer}, v1.Config{}, "linux/amd64"))
			s := openStore(t)
			_, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
			if !errorsIs(err, tc.err) {
				t.Fatalf("%v, want %v", err, tc.err)
			}
			mustContain(t, err, append(tc.want, tc.layer.MustDigest().String())...)
			assertNothingCached(t, s, tc.layer.MustDigest())
		})
	}
}

func TestDiffIDMismatch(t *testing.T) {
	r := newRegistry(t)
	l := ti.NewLayer([]ti.Entry{ti.File("f", "x")}, ti.Gzip)
	img := mustImage(t, []*ti.Layer{l}, v1.Config{}, "linux/amd64")
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs[0] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	img = mustConfig(t, img, cf)
	ref := reg(t, r, "diff/app:1", img)
	s := openStore(t)
	_, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
	if !errorsIs(err, imagestore.ErrBadImage) {
		t.Fatalf("%v, want ErrBadImage", err)
	}
	mustContain(t, err, "diff_id", l.MustDigest().String())
	assertNothingCached(t, s, l.MustDigest())
}

func TestBadReferences(t *testing.T) {
	s := openStore(t)
	for _, ref := range []string{"", "UPPER/Case:tag", "oci-layout:", "docker-archive::x", "a b"} {
		if _, err := s.Pull(ctx(t), ref, imagestore.PullOptions{}); !errorsIs(err, imagestore.ErrBadReference) {
			t.Errorf("%q: %v, want ErrBadReference", ref, err)
		}
	}
	if _, err := s.Pull(ctx(t), "alpine", imagestore.PullOptions{Platform: "linux"}); !errorsIs(err, imagestore.ErrBadReference) {
		t.Errorf("bad platform: %v", err)
	}
	if _, err := s.RootDisk(ctx(t), "sha256:"+strings.Repeat("0", 64)); !errorsIs(err, imagestore.ErrNotFound) {
		t.Errorf("root disk of unknown image: %v", err)
	}
	if _, err := s.Pull(ctx(t), "docker-archive:/nonexistent.tar", imagestore.PullOptions{}); !errorsIs(err, imagestore.ErrNotFound) {
		t.Errorf("missing archive: %v", err)
	}
}

// Absolute entry names are image-relative, as Docker and containerd treat
// them (documented in package layer): /etc/x lands at /etc/x in the disk.
func TestAbsoluteNamesAreImageRelative(t *testing.T) {
	r := newRegistry(t)
	l := ti.NewLayer([]ti.Entry{ti.File("/etc/abs", "a"), ti.Dir("/opt/"), ti.Hardlink("/opt/link", "/etc/abs")}, ti.Gzip)
	ref := reg(t, r, "abs/app:1", mustImage(t, []*ti.Layer{l}, v1.Config{}, "linux/amd64"))
	s := openStore(t)
	img, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rd, err := s.RootDisk(ctx(t), img.Digest)
	if err != nil {
		t.Fatal(err)
	}
	x := ti.OpenExt4(t, rd.Path)
	if got := x.Cat("/etc/abs"); got != "a" {
		t.Errorf("/etc/abs = %q", got)
	}
	if a, b := x.MustStat("/etc/abs"), x.MustStat("/opt/link"); a.Inode != b.Inode {
		t.Errorf("/opt/link is not a hardlink of /etc/abs")
	}
}

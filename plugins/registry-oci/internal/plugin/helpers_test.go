package plugin_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/plugin"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

func testCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// noAmbientCredentials keeps the machine's Docker config out of a test.
func noAmbientCredentials(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	t.Setenv("HOME", t.TempDir())
}

// setup describes one plugin under test.
type setup struct {
	body     string // the plugin's config block body
	registry *sdk.RegistrySettings
	opts     []plugin.Option
	stateDir string // default: a fresh temp dir
}

// serve starts the plugin behind a real gRPC pair and configures it for the
// amd64 platform unless body says otherwise, so tests do not depend on the
// host's architecture.
func serve(t *testing.T, s setup) (sdk.ImageSource, string) {
	t.Helper()
	noAmbientCredentials(t)
	c := sdktest.Serve(t, sdk.ServeConfig{Images: plugin.New(s.opts...)}).Images
	if s.stateDir == "" {
		s.stateDir = filepath.Join(t.TempDir(), "plugins-data", "oci")
	}
	body := s.body
	if !strings.Contains(body, "platform") {
		body += "\nplatform = \"linux/amd64\"\n"
	}
	if s.registry == nil {
		s.registry = &sdk.RegistrySettings{}
	}
	cfg := &sdk.Config{
		Filename:  "boxctl.hcl",
		Body:      []byte(body),
		BodyStart: hcl.Pos{Line: 1, Column: 1},
		StateDir:  s.stateDir,
		Home:      t.TempDir(),
		Registry:  s.registry,
	}
	if err := c.Configure(testCtx(t), cfg); err != nil {
		t.Fatalf("configure: %v", err)
	}
	return c, s.stateDir
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

// simpleImage is a one-layer image whose /id holds id.
func simpleImage(t *testing.T, id string) v1.Image {
	return mustImage(t, []*ti.Layer{ti.NewLayer([]ti.Entry{ti.File("id", id)}, ti.Gzip)}, v1.Config{Cmd: []string{"/bin/sh"}}, "linux/amd64")
}

func digestOf(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func push(t *testing.T, r *ti.Registry, repoTag string, img v1.Image) string {
	t.Helper()
	if err := r.Push(repoTag, img); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
	return r.Ref(repoTag)
}

func pull(t *testing.T, imgs sdk.ImageSource, ref string) sdk.Image {
	t.Helper()
	img, err := imgs.Pull(testCtx(t), sdk.PullRequest{Reference: ref}, nil)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	return img
}

// wantRemote checks that err crossed the wire (an sdk.RemoteError), matches
// kind and mentions every part.
func wantRemote(t *testing.T, what string, err, kind error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want %v", what, kind)
		return
	}
	var re *sdk.RemoteError
	if !errors.As(err, &re) {
		t.Errorf("%s: %T %v did not come over the wire", what, err, err)
	}
	if !errors.Is(err, kind) {
		t.Errorf("%s: %v (code %v), want %v", what, err, codeOf(err), kind)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not mention %q", what, err, p)
		}
	}
}

func codeOf(err error) string {
	var re *sdk.RemoteError
	if errors.As(err, &re) {
		return re.Code.String()
	}
	return "none"
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func pruner(t *testing.T, imgs sdk.ImageSource) sdk.Pruner {
	t.Helper()
	p, ok := imgs.(sdk.Pruner)
	if !ok {
		t.Fatalf("the image source client %T has no Prune", imgs)
	}
	return p
}

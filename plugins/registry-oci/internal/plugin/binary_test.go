package plugin_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/config"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
	"github.com/boxctl/boxctl/test/testbin"
)

var bins testbin.Set

func TestMain(m *testing.M) {
	code := m.Run()
	bins.Cleanup()
	os.Exit(code)
}

// startBinary starts the real boxctl-plugin-oci as boxctl does and
// configures it with cfg.
func startBinary(t *testing.T, cfg *sdk.Config) (sdk.ImageSource, error) {
	t.Helper()
	bin := filepath.Join(bins.Dir(t, "boxctl-plugin-oci"), "boxctl-plugin-oci")
	imgs := sdktest.StartPlugin(t, bin).Images
	return imgs, imgs.Configure(testCtx(t), cfg)
}

// The real binary, started and configured the way boxctl does it: pull from
// a loopback registry and build a root disk.
func TestBinary(t *testing.T) {
	noAmbientCredentials(t)
	r := newRegistry(t)
	img := mustImage(t, []*ti.Layer{
		ti.NewLayer([]ti.Entry{ti.Dir("bin"), ti.File("bin/hello", "#!/bin/sh\necho hi\n").With(0o755, 0, 0)}, ti.Gzip),
	}, v1.Config{Entrypoint: []string{"/bin/hello"}}, "linux/amd64")
	ref := push(t, r, "bin/app:1", img)

	home := testbin.ShortTempDir(t)
	stateDir := filepath.Join(home, "plugins-data", "oci")
	imgs, err := startBinary(t, &sdk.Config{StateDir: stateDir, Home: home, Registry: &sdk.RegistrySettings{}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := imgs.Info(testCtx(t))
	if err != nil || info.Name != "oci" || !info.Capabilities.Prune || !info.Capabilities.CheckReferences || !info.Capabilities.OCILayout {
		t.Fatalf("info: %+v, %v", info, err)
	}

	var layers, statuses int
	got, err := imgs.Pull(testCtx(t), sdk.PullRequest{
		Reference: ref,
		Platform:  &sdk.Platform{OS: "linux", Architecture: "amd64"},
	}, func(ev sdk.PullEvent) {
		if ev.Layer != nil {
			layers++
		}
		if ev.Status != "" {
			statuses++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digestOf(t, img) || layers == 0 || statuses == 0 {
		t.Errorf("pull: %+v with %d layer and %d status events", got, layers, statuses)
	}
	rd, err := imgs.RootDisk(testCtx(t), got.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if want := stateDir + string(filepath.Separator); !strings.HasPrefix(rd.Path, want) {
		t.Errorf("root disk %s is not under %s", rd.Path, want)
	}
	x := ti.OpenExt4(t, rd.Path)
	x.Fsck()
	if st := x.MustStat("/bin/hello"); st.Mode != 0o755 {
		t.Errorf("/bin/hello mode %o", st.Mode)
	}
	if list, err := imgs.ListImages(testCtx(t)); err != nil || len(list) != 1 {
		t.Errorf("list: %v, %v", list, err)
	}
	// Typed errors survive the process boundary.
	_, err = imgs.GetImage(testCtx(t), r.Ref("bin/app:2"))
	if !errors.Is(err, sdk.ErrNotFound) {
		t.Errorf("unknown image through the process boundary: %v", err)
	}
	_, err = imgs.Pull(testCtx(t), sdk.PullRequest{Reference: closedPort(t) + "/x/y:1"}, nil)
	if !errors.Is(err, sdk.ErrUnavailable) || !strings.Contains(err.Error(), "is there a network?") {
		t.Errorf("unreachable registry through the process boundary: %v", err)
	}
}

// A bad config block comes back from the process as a diagnostic at its
// place in the user's file.
func TestBinaryConfigError(t *testing.T) {
	home := testbin.ShortTempDir(t)
	file := testbin.WriteFile(t, home, "boxctl.hcl", fmt.Sprintf(`home = %q
images = "oci"

plugin "oci" {
  config {
    concurrency = 0
  }
}
`, home))
	cfg, err := config.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Plugin("oci")
	_, err = startBinary(t, &sdk.Config{
		Filename: cfg.File, Body: p.ConfigBody, BodyStart: p.ConfigStart,
		StateDir: filepath.Join(home, "plugins-data", "oci"), Home: home,
	})
	var diags hcl.Diagnostics
	if !errors.As(err, &diags) || len(diags) != 1 {
		t.Fatalf("got %v, want one diagnostic", err)
	}
	if d := diags[0]; d.Subject == nil || d.Subject.Filename != file || d.Subject.Start.Line != 6 || d.Summary != "Invalid concurrency" {
		t.Errorf("diagnostic %+v at %+v, want Invalid concurrency at %s:6", d, d.Subject, file)
	}
}

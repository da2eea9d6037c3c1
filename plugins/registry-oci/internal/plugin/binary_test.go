package plugin_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/pluginhost"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
	"github.com/boxctl/boxctl/sdk"
	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
	"github.com/boxctl/boxctl/test/testbin"
)

var bins testbin.Set

func TestMain(m *testing.M) {
	code := m.Run()
	bins.Cleanup()
	os.Exit(code)
}

// The real binary, started and configured by boxctl's plugin host the way
// the CLI does it: pull from a loopback registry and build a root disk.
func TestBinaryThroughPluginHost(t *testing.T) {
	dir := bins.Dir(t, "boxctl-plugin-oci")
	noAmbientCredentials(t)
	r := newRegistry(t)
	img := mustImage(t, []*ti.Layer{
		ti.NewLayer([]ti.Entry{ti.Dir("bin"), ti.File("bin/hello", "#!/bin/sh\necho hi\n").With(0o755, 0, 0)}, ti.Gzip),
	}, v1.Config{Entrypoint: []string{"/bin/hello"}}, "linux/amd64")
	ref := push(t, r, "bin/app:1", img)

	home := testbin.ShortTempDir(t)
	cfg := config.Default()
	cfg.Home = home
	cfg.Images = "oci"
	host := pluginhost.New(cfg, pluginhost.WithSearchDirs(dir), pluginhost.WithLogger(hclog.NewNullLogger(), nil))
	t.Cleanup(host.Close)
	imgs, err := host.Images(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	info, err := imgs.Info(testCtx(t))
	if err != nil || info.GetName() != "oci" {
		t.Fatalf("info: %v, %v", info, err)
	}

	var layers, statuses int
	got, err := imgs.Pull(testCtx(t), &pluginv1.PullRequest{
		Reference: ref,
		Platform:  &pluginv1.Platform{Os: "linux", Architecture: "amd64"},
	}, func(ev *pluginv1.PullEvent) {
		if ev.GetLayer() != nil {
			layers++
		}
		if ev.GetStatus() != "" {
			statuses++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetDigest() != digestOf(t, img) || layers == 0 || statuses == 0 {
		t.Errorf("pull: %v with %d layer and %d status events", got, layers, statuses)
	}
	rd, err := imgs.RootDisk(testCtx(t), got.GetDigest())
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(home, "plugins-data", "oci") + string(filepath.Separator); !strings.HasPrefix(rd.GetPath(), want) {
		t.Errorf("root disk %s is not under %s", rd.GetPath(), want)
	}
	x := ti.OpenExt4(t, rd.GetPath())
	x.Fsck()
	if st := x.MustStat("/bin/hello"); st.Mode != 0o755 {
		t.Errorf("/bin/hello mode %o", st.Mode)
	}
	if list, err := imgs.ListImages(testCtx(t)); err != nil || len(list) != 1 {
		t.Errorf("list: %v, %v", list, err)
	}
	// Typed errors survive the process boundary and the host.
	_, err = imgs.GetImage(testCtx(t), r.Ref("bin/app:2"))
	if !errors.Is(err, sdk.ErrNotFound) {
		t.Errorf("unknown image through the host: %v", err)
	}
	_, err = imgs.Pull(testCtx(t), &pluginv1.PullRequest{Reference: closedPort(t) + "/x/y:1"}, nil)
	if !errors.Is(err, sdk.ErrUnavailable) || !strings.Contains(err.Error(), "is there a network?") {
		t.Errorf("unreachable registry through the host: %v", err)
	}
}

func TestBinaryConfigErrorThroughPluginHost(t *testing.T) {
	dir := bins.Dir(t, "boxctl-plugin-oci")
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
	host := pluginhost.New(cfg, pluginhost.WithSearchDirs(dir), pluginhost.WithLogger(hclog.NewNullLogger(), nil))
	t.Cleanup(host.Close)
	_, err = host.Images(testCtx(t))
	var ce *pluginhost.ConfigureError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want a ConfigureError", err)
	}
	if d := ce.Diags[0]; d.Subject == nil || d.Subject.Filename != file || d.Subject.Start.Line != 6 || d.Summary != "Invalid concurrency" {
		t.Errorf("diagnostic %+v at %+v, want Invalid concurrency at %s:6", d, d.Subject, file)
	}
	if !strings.Contains(err.Error(), "concurrency = 0") {
		t.Errorf("the rendered error does not show the offending line:\n%v", err)
	}
}

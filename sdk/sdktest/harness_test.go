package sdktest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/sdk"
	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// exampleImages is a minimal ImageSource used to exercise the sdk's gRPC
// glue: the subject under test is the wire, not this implementation.
type exampleImages struct {
	Tag string `hcl:"tag,optional"`
}

func (e *exampleImages) Info(context.Context) (*pluginv1.InfoResponse, error) {
	return &pluginv1.InfoResponse{Name: "example", Version: "1.2.3", Capabilities: []string{"registry"}}, nil
}

func (e *exampleImages) Configure(_ context.Context, cfg *sdk.Config) error {
	return cfg.Decode(e)
}

func (e *exampleImages) Pull(_ context.Context, req *pluginv1.PullRequest, progress func(*pluginv1.PullEvent)) (*pluginv1.Image, error) {
	if req.GetReference() == "missing" {
		return nil, fmt.Errorf("image %q: %w", req.GetReference(), sdk.ErrNotFound)
	}
	for i := 0; i < 3; i++ {
		progress(&pluginv1.PullEvent{Event: &pluginv1.PullEvent_Layer{Layer: &pluginv1.LayerProgress{Digest: "sha256:l", DoneBytes: uint64(i)}}})
	}
	return &pluginv1.Image{Digest: "sha256:abc", References: []string{req.GetReference() + ":" + e.Tag}}, nil
}

func (e *exampleImages) GetImage(context.Context, string) (*pluginv1.Image, error) {
	return nil, errors.New("disk on fire")
}

func (e *exampleImages) RootDisk(context.Context, string) (*pluginv1.RootDiskResponse, error) {
	return nil, sdk.ErrUnsupported
}

func (e *exampleImages) ListImages(context.Context) ([]*pluginv1.Image, error) {
	return []*pluginv1.Image{{Digest: "sha256:1"}, {Digest: "sha256:2"}}, nil
}

func (e *exampleImages) RemoveImage(context.Context, string) (*pluginv1.RemoveImageResponse, error) {
	return nil, fmt.Errorf("in use: %w", sdk.ErrInvalidState)
}

func (e *exampleImages) Prune(context.Context, *pluginv1.PruneRequest) (*pluginv1.PruneResponse, error) {
	return &pluginv1.PruneResponse{ReclaimedBytes: 7}, nil
}

func TestImageSourceOverTheWire(t *testing.T) {
	impl := &exampleImages{}
	c := sdktest.Serve(t, sdk.ServeConfig{Images: impl})
	ctx := context.Background()

	info, err := c.Images.Info(ctx)
	if err != nil || info.GetName() != "example" || len(info.GetProtocolVersions()) != 1 {
		t.Fatalf("info: %v %v", info, err)
	}
	src := []byte("\n  tag = \"v1\"\n")
	if err := c.Images.Configure(ctx, &sdk.Config{Filename: "c.hcl", Body: src, BodyStart: hcl.Pos{Line: 3, Column: 11, Byte: 40}}); err != nil {
		t.Fatal(err)
	}
	var events int
	img, err := c.Images.Pull(ctx, &pluginv1.PullRequest{Reference: "alpine"}, func(*pluginv1.PullEvent) { events++ })
	if err != nil || events != 3 || img.GetReferences()[0] != "alpine:v1" {
		t.Fatalf("pull: %v events=%d img=%v", err, events, img)
	}
	if _, err := c.Images.Pull(ctx, &pluginv1.PullRequest{Reference: "missing"}, nil); !errors.Is(err, sdk.ErrNotFound) || !strings.Contains(err.Error(), `image "missing"`) {
		t.Fatalf("typed error lost on the wire: %v", err)
	}
	if _, err := c.Images.RemoveImage(ctx, "x"); !errors.Is(err, sdk.ErrInvalidState) {
		t.Fatalf("remove: %v", err)
	}
	if _, err := c.Images.RootDisk(ctx, "x"); !errors.Is(err, sdk.ErrUnsupported) {
		t.Fatalf("rootdisk: %v", err)
	}
	_, err = c.Images.GetImage(ctx, "x")
	var re *sdk.RemoteError
	if !errors.As(err, &re) || re.Error() != "disk on fire" || errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("untyped error: %v", err)
	}
	if imgs, err := c.Images.ListImages(ctx); err != nil || len(imgs) != 2 {
		t.Fatalf("list: %v %v", imgs, err)
	}
}

func TestConfigDiagnosticsKeepTheirPosition(t *testing.T) {
	c := sdktest.Serve(t, sdk.ServeConfig{Images: &exampleImages{}})
	src := []byte("\n    tga = \"v1\"\n  ")
	err := c.Images.Configure(context.Background(), &sdk.Config{Filename: "/etc/boxctl/config.hcl", Body: src, BodyStart: hcl.Pos{Line: 7, Column: 11, Byte: 120}})
	var diags hcl.Diagnostics
	if !errors.As(err, &diags) || len(diags) != 1 {
		t.Fatalf("got %v", err)
	}
	d := diags[0]
	if d.Subject == nil || d.Subject.Filename != "/etc/boxctl/config.hcl" || d.Subject.Start.Line != 8 || d.Subject.Start.Column != 5 || !strings.Contains(d.Detail, `Did you mean "tag"?`) {
		t.Fatalf("diagnostic %+v subject %+v", d, d.Subject)
	}
}

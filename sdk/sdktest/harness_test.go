package sdktest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// exampleImages is a minimal ImageSource used to exercise the sdk's gRPC
// glue: the subject under test is the wire, not this implementation.
type exampleImages struct {
	Tag string `hcl:"tag,optional"`
}

func (e *exampleImages) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "example", Version: "1.2.3", Capabilities: sdk.Capabilities{Registry: true}}, nil
}

func (e *exampleImages) Configure(_ context.Context, cfg *sdk.Config) error {
	return cfg.Decode(e)
}

func (e *exampleImages) Pull(_ context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
	if req.Reference == "missing" {
		return sdk.Image{}, fmt.Errorf("image %q: %w", req.Reference, sdk.ErrNotFound)
	}
	for i := 0; i < 3; i++ {
		progress(sdk.PullEvent{Layer: &sdk.LayerProgress{Digest: "sha256:l", Done: uint64(i)}})
	}
	return sdk.Image{Digest: "sha256:abc", References: []string{req.Reference + ":" + e.Tag}}, nil
}

func (e *exampleImages) GetImage(context.Context, string) (sdk.Image, error) {
	return sdk.Image{}, errors.New("disk on fire")
}

func (e *exampleImages) RootDisk(context.Context, string) (sdk.RootDisk, error) {
	return sdk.RootDisk{}, sdk.ErrUnsupported
}

func (e *exampleImages) ListImages(context.Context) ([]sdk.Image, error) {
	return []sdk.Image{{Digest: "sha256:1"}, {Digest: "sha256:2"}}, nil
}

func (e *exampleImages) RemoveImage(context.Context, string) (sdk.Removed, error) {
	return sdk.Removed{}, fmt.Errorf("in use: %w", sdk.ErrInvalidState)
}

func (e *exampleImages) Prune(context.Context, sdk.PruneRequest) (sdk.Removed, error) {
	return sdk.Removed{Reclaimed: 7}, nil
}

func TestImageSourceOverTheWire(t *testing.T) {
	impl := &exampleImages{}
	c := sdktest.Serve(t, sdk.ServeConfig{Images: impl})
	ctx := context.Background()

	info, err := c.Images.Info(ctx)
	if err != nil || info.Name != "example" || len(info.ProtocolVersions) != 1 {
		t.Fatalf("info: %v %v", info, err)
	}
	src := []byte("\n  tag = \"v1\"\n")
	if err := c.Images.Configure(ctx, &sdk.Config{Filename: "c.hcl", Body: src, BodyStart: hcl.Pos{Line: 3, Column: 11, Byte: 40}}); err != nil {
		t.Fatal(err)
	}
	var events int
	img, err := c.Images.Pull(ctx, sdk.PullRequest{Reference: "alpine"}, func(sdk.PullEvent) { events++ })
	if err != nil || events != 3 || img.References[0] != "alpine:v1" {
		t.Fatalf("pull: %v events=%d img=%v", err, events, img)
	}
	if _, err := c.Images.Pull(ctx, sdk.PullRequest{Reference: "missing"}, nil); !errors.Is(err, sdk.ErrNotFound) || !strings.Contains(err.Error(), `image "missing"`) {
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

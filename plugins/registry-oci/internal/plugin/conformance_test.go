package plugin_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/plugin"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
	"github.com/boxctl/boxctl/test/images/imagefixture"
)

// The ImageSource conformance suite against the plugin in-process, behind
// the sdk's real gRPC client and server, with busybox images in OCI
// layouts.
func TestImageSourceConformance(t *testing.T) {
	fx := imagefixture.Layouts(t)
	sdktest.ImageSourceConformance(t, newInProcess, fx)
}

func newInProcess(t *testing.T) (sdk.ImageSource, string) {
	noAmbientCredentials(t)
	state := filepath.Join(t.TempDir(), "plugins-data", "oci")
	c := sdktest.Serve(t, sdk.ServeConfig{Images: plugin.New()}).Images
	if err := c.Configure(context.Background(), &sdk.Config{StateDir: state, Home: t.TempDir()}); err != nil {
		t.Fatalf("configure: %v", err)
	}
	return c, state
}

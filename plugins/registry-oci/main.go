// Command boxctl-plugin-oci is boxctl's default ImageSource plugin: it pulls
// images from OCI registries, OCI image layouts and `docker save` archives
// into a content-addressed cache under <home>/plugins-data/oci and builds a
// read-only ext4 root disk per image. boxctl starts it; it is not meant to
// be run by hand.
package main

import (
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/plugin"
	"github.com/boxctl/boxctl/sdk"
)

func main() {
	logger := sdk.NewLogger(plugin.Name)
	sdk.Serve(sdk.ServeConfig{
		Images: plugin.New(plugin.WithLogger(logger)),
		Logger: logger,
	})
}

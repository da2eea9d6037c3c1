// Package imagefixture builds the test images the ImageSource conformance
// suite (sdk/sdktest) pulls: busybox images (package busybox) in OCI image
// layouts, referenced as oci-layout: references, so no registry or network
// is needed.
package imagefixture

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
	"github.com/boxctl/boxctl/test/images/busybox"
)

// imageConfig is the fixture image's config: every field the suite
// compares is set, so a source that drops one is caught.
func imageConfig() busybox.Config {
	return busybox.Config{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"echo conformance"},
		Env:        []string{"CONFORMANCE=1", "EMPTY="},
		WorkingDir: "/srv/app",
		User:       busybox.GuestUser,
	}
}

// Layouts writes the fixture's layouts under a temporary directory of t and
// returns the fixture: Reference and Alias are the same image in two
// layouts (the image is deterministic), Other is the image with another
// command.
func Layouts(t testing.TB) sdktest.ImageFixture {
	t.Helper()
	dir := t.TempDir()
	build := func(name string, cfg busybox.Config) string {
		t.Helper()
		layout := filepath.Join(dir, name)
		if _, err := busybox.BuildLayout(layout, busybox.Options{Tag: "v1", Config: &cfg}); err != nil {
			t.Fatalf("build the %s test image: %v", name, err)
		}
		return layout
	}
	config := imageConfig()
	main := build("main", config)
	alias := build("alias", config)
	otherCfg := imageConfig()
	otherCfg.Cmd = []string{"echo other"}
	other := build("other", otherCfg)
	return sdktest.ImageFixture{
		Reference: "oci-layout:" + main + ":v1",
		Config: sdk.ImageConfig{
			Entrypoint: config.Entrypoint,
			Cmd:        config.Cmd,
			Env:        append([]string{"PATH=" + busybox.Path}, config.Env...),
			WorkingDir: config.WorkingDir,
			User:       config.User,
		},
		Alias:        "oci-layout:" + alias + ":v1",
		Other:        "oci-layout:" + other + ":v1",
		MissingTag:   "oci-layout:" + main + ":v2",
		MissingImage: fmt.Sprintf("oci-layout:%s:v1", filepath.Join(dir, "missing")),
		Local:        true,
	}
}

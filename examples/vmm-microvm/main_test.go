package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// The test binary doubles as the plugin: run by sdktest.StartPlugin it
// serves the VMM, run from a launch plan it is the launcher.
func TestMain(m *testing.M) {
	hs := sdk.Handshake()
	if os.Getenv(hs.MagicCookieKey) == hs.MagicCookieValue || (len(os.Args) == 3 && os.Args[1] == "launch") {
		main()
		return
	}
	os.Exit(m.Run())
}

// guestDir is the boxctl guest's kernel and initramfs: $BOXCTL_GUEST_DIR,
// or the repository's build/guest (`make guest`).
func guestDir(t *testing.T) string {
	dir := os.Getenv("BOXCTL_GUEST_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "build", "guest")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinuz", "initramfs"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("the boxctl guest: %v (run `make guest` in the repository, or set BOXCTL_GUEST_DIR)", err)
		}
	}
	return dir
}

// TestConformance runs boxctl's VMM conformance suite against this plugin,
// booting the real boxctl guest (under TCG where KVM is not usable).
func TestConformance(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := guestDir(t)
	body := fmt.Sprintf("kernel = %q\ninitrd = %q\n", filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs"))
	newVMM := func(t *testing.T) sdk.VMM {
		vmm := sdktest.StartPlugin(t, exe).VMM
		if err := vmm.Configure(context.Background(), &sdk.Config{Filename: "test.hcl", Body: []byte(body), BodyStart: hcl.InitialPos}); err != nil {
			t.Fatal(err)
		}
		return vmm
	}
	sdktest.VMMConformance(t, newVMM, sdktest.WithReconnect(newVMM), sdktest.WithGuest(nil))
}

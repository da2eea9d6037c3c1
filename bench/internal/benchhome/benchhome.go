// Package benchhome is the boxctl installation the VM benchmarks run in: a
// temporary home, the busybox test image as an OCI layout, and the boxctl
// binary run with the guest kernel the benchmark was given.
package benchhome

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/boxctl/boxctl/test/images/busybox"
)

// Home is one temporary boxctl home.
type Home struct {
	Dir    string // the temporary directory holding everything
	Home   string // boxctl's home
	Image  string // the busybox image's reference
	Boxctl string // path of the boxctl binary
	env    []string
}

// New makes a home under a new temporary directory named after prefix;
// binDir holds boxctl and its plugins, guestDir the guest kernel and
// initramfs. Close removes it.
func New(binDir, guestDir, prefix string) (*Home, error) {
	binDir, _ = filepath.Abs(binDir)
	guestDir, _ = filepath.Abs(guestDir)
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	layout := filepath.Join(dir, "img")
	if _, err := busybox.BuildLayout(layout, busybox.Options{}); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &Home{
		Dir: dir, Home: filepath.Join(dir, "h"), Image: "oci-layout:" + layout,
		Boxctl: filepath.Join(binDir, "boxctl"),
		env:    append(os.Environ(), "BOXCTL_GUEST_DIR="+guestDir, "XDG_CONFIG_HOME="+dir),
	}, nil
}

// CLI runs boxctl on the home and returns its combined output.
func (h *Home) CLI(args ...string) (string, error) { return h.CLIWithEnv(nil, args...) }

// CLIWithEnv is CLI with extra environment variables (KEY=VALUE).
func (h *Home) CLIWithEnv(env []string, args ...string) (string, error) {
	cmd := exec.Command(h.Boxctl, append([]string{"--home", h.Home}, args...)...)
	cmd.Env = append(append([]string{}, h.env...), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("boxctl %v: %v: %s", args, err, out)
	}
	return string(out), nil
}

// Close removes the home and everything in it.
func (h *Home) Close() { os.RemoveAll(h.Dir) }

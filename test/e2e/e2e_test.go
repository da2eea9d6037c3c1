// Package e2e runs boxctl end to end on real VMs: the boxctl binary, the
// qemu, qcow2 and oci plugins, the guest kernel and agent from `make
// guest`, and a busybox image built from Debian's busybox-static. Under TCG
// a boot takes seconds, so most checks share one booted box.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/test/images/busybox"
	"github.com/boxctl/boxctl/test/testbin"
)

var bins testbin.Set

func TestMain(m *testing.M) {
	code := m.Run()
	bins.Cleanup()
	os.Exit(code)
}

// env is one boxctl installation with its own home and a busybox image.
type env struct {
	t     *testing.T
	bin   string
	home  string
	image string
	guest string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := testbin.ModuleRoot(t)
	guest := filepath.Join(root, "build", "guest")
	for _, f := range []string{"vmlinuz", "initramfs"} {
		if _, err := os.Stat(filepath.Join(guest, f)); err != nil {
			t.Fatalf("guest %s missing (%v): run `make guest` (make test does) to build the guest kernel and initramfs", f, err)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 not found: run scripts/install-deps.sh (make test does)")
	}
	bin := bins.Dir(t, "boxctl", "boxctl-plugin-qemu", "boxctl-plugin-qcow2", "boxctl-plugin-oci")
	dir := testbin.ShortTempDir(t)
	layout := filepath.Join(dir, "img")
	if _, err := busybox.BuildLayout(layout, busybox.Options{}); err != nil {
		t.Fatalf("build the busybox image: %v", err)
	}
	e := &env{t: t, bin: bin, home: filepath.Join(dir, "h"), image: "oci-layout:" + layout, guest: guest}
	t.Cleanup(func() {
		// Stop whatever a failed test left running.
		_, _, _ = e.run(nil, "rm", "-a", "-f")
		_ = exec.Command("pkill", "-9", "-f", e.home).Run()
	})
	return e
}

func (e *env) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, "boxctl"), append([]string{"--home", e.home}, args...)...)
	// No config file: the built-in defaults (vmm = "auto", which picks qemu
	// where there is no libkrun plugin; qcow2; oci) apply.
	cmd.Env = append(filterEnv(os.Environ(), "BOXCTL_CONFIG"), "BOXCTL_GUEST_DIR="+e.guest, "XDG_CONFIG_HOME="+e.home, "BOXCTL_LOG=")
	return cmd
}

func filterEnv(env []string, drop string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, drop+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// run runs boxctl with stdin and returns stdout, stderr and the exit code.
func (e *env) run(stdin []byte, args ...string) (string, string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := e.command(ctx, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	}
	if err != nil {
		e.t.Fatalf("boxctl %v: %v", args, err)
	}
	return out.String(), errb.String(), 0
}

func (e *env) ok(args ...string) string {
	e.t.Helper()
	out, errs, code := e.run(nil, args...)
	if code != 0 {
		e.t.Fatalf("boxctl %s: exit %d\nstdout: %s\nstderr: %s%s", strings.Join(args, " "), code, out, errs, e.consoleTail())
	}
	return out
}

// consoleTail returns the end of every box's console log, for failures.
func (e *env) consoleTail() string {
	logs, _ := filepath.Glob(filepath.Join(e.home, "boxes", "*", "console.log"))
	var b strings.Builder
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		if len(data) > 2000 {
			data = data[len(data)-2000:]
		}
		fmt.Fprintf(&b, "\n--- %s ---\n%s", l, data)
	}
	return b.String()
}

func (e *env) boxDir(name string) string {
	e.t.Helper()
	id := strings.TrimSpace(e.ok("ls", "-a", "--format", "{{if eq .Name \""+name+"\"}}{{.ID}}{{end}}"))
	id = strings.TrimSpace(strings.ReplaceAll(id, "\n", ""))
	return filepath.Join(e.home, "boxes", id)
}

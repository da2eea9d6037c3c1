package integration

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/pluginhost"
	"github.com/boxctl/boxctl/test/images/busybox"
	"github.com/boxctl/boxctl/test/testbin"
)

// busyboxLayout writes the busybox test image as an OCI layout (tag
// "busybox:latest") and returns its directory.
func busyboxLayout(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "busybox")
	if _, err := busybox.BuildLayout(dir, busybox.Options{}); err != nil {
		t.Skipf("skipped: cannot build the busybox test image: %v", err)
	}
	return dir
}

func (e *env) assertNoBoxes(after string) {
	e.t.Helper()
	if out := e.ok("ls", "-a", "-q"); strings.TrimSpace(out) != "" {
		e.t.Fatalf("%s: boxes were recorded: %q", after, out)
	}
}

// `create` refuses, with exit 125 and a message saying what is wrong, a box
// that could never start: a reference no pull could resolve, a local
// layout or archive that is not there, a platform no image exists for, a
// VMM plugin that does not exist, a plugin config block its plugin
// rejects. Nothing is recorded. The checks use the real oci plugin and
// never the network.
func TestCreateRefusesBoxesThatCanNeverStart(t *testing.T) {
	layout := busyboxLayout(t)
	fifo := filepath.Join(t.TempDir(), "image.tar")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "")

	for _, tc := range []struct {
		name string
		hcl  string // config file, "" for the good one
		args []string
		want []string
	}{
		{"malformed reference", "", []string{"@@@"}, []string{`"@@@"`, "not an image reference", "correct the image reference"}},
		{"missing layout", "", []string{"oci-layout:/nonexistent/layout"}, []string{"/nonexistent/layout does not exist"}},
		{"missing tag in a layout", "", []string{"oci-layout:" + layout + ":nope"}, []string{`no image tagged "nope"`, "busybox:latest"}},
		{"missing archive", "", []string{"docker-archive:/nonexistent/image.tar"}, []string{"/nonexistent/image.tar does not exist"}},
		{"archive that is a FIFO", "", []string{"docker-archive:" + fifo}, []string{fifo, "named pipe"}},
		{"malformed platform", "", []string{"--platform", "linux", "img"}, []string{`platform "linux"`, "os/arch"}},
		{"unknown architecture", "", []string{"--platform", "linux/bogus", "img"}, []string{`unknown architecture "bogus"`}},
		{"non-Linux platform", "", []string{"--platform", "windows/amd64", "img"}, []string{"windows/amd64", "must be linux"}},
		{"layout without the platform", "", []string{"--platform", "linux/s390x", "oci-layout:" + layout}, []string{"linux/s390x"}},
		{"unknown vmm plugin", "vmm = \"nosuch\"\n", []string{"img"}, []string{`plugin "nosuch"`, "plugin binary not found"}},
		{"bad vmm config block", "vmm = \"procvmm\"\nplugin \"procvmm\" {\n  config {\n    hang_onn = \"x\"\n  }\n}\n",
			[]string{"img"}, []string{"config.hcl:4:5", "Unsupported argument"}},
		{"bad image plugin config block", "vmm = \"procvmm\"\nplugin \"oci\" {\n  config {\n    max_unpacked_size = \"lots\"\n  }\n}\n",
			[]string{"img"}, []string{"config.hcl:4:25", "Invalid max_unpacked_size"}},
		{"vmm plugin speaking another protocol", "vmm = \"badproto\"\n", []string{"img"}, []string{"unsupported plugin protocol version"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.hcl != "" {
				testbin.WriteFile(t, filepath.Dir(e.config), "config.hcl", tc.hcl)
				t.Cleanup(func() { testbin.WriteFile(t, filepath.Dir(e.config), "config.hcl", "vmm = \"procvmm\"\n") })
			}
			args := append([]string{"create", "--name", "never"}, tc.args...)
			out, errs, code := e.cli(args...)
			if code != 125 {
				t.Fatalf("boxctl %s: exit %d, want 125\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr does not mention %q:\n%s", w, errs)
				}
			}
			e.assertNoBoxes("a refused create")
		})
	}

	// The good cases still work, and start.
	id := strings.TrimSpace(e.ok("create", "--name", "fine", "oci-layout:"+layout))
	e.ok("create", "--name", "tagged", "--platform", "linux/amd64", "oci-layout:"+layout+":busybox:latest")
	e.ok("create", "--name", "registry", "docker.io/library/alpine:3.20")
	e.ok("start", "fine")
	if b := e.info(e.runtime(), id); b.Status != model.StatusRunning {
		t.Fatalf("box fine is %s after start", b.Status)
	}
	e.ok("rm", "-f", "fine")
	e.assertConsistent(e.runtime())
}

// Through the Go API the refusals match core's typed errors, and
// GetOrCreate checks only when it would create.
func TestCreateErrorsForCallers(t *testing.T) {
	e := newEnv(t, "")
	rt := e.runtime()
	ctx := context.Background()
	opts := func(name, image string) core.BoxOptions {
		return core.BoxOptions{Name: name, Config: model.BoxConfig{Image: image}}
	}
	for _, tc := range []struct {
		image string
		kind  error
	}{
		{"@@@", core.ErrInvalidArgument},
		{"oci-layout:/nonexistent/layout", core.ErrNotFound},
	} {
		if _, err := rt.Create(ctx, opts("x", tc.image)); !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.image) {
			t.Errorf("Create with %s: %v, want %v naming the image", tc.image, err, tc.kind)
		}
		if _, _, err := rt.GetOrCreate(ctx, opts("y", tc.image)); !errors.Is(err, tc.kind) {
			t.Errorf("GetOrCreate with %s: %v, want %v", tc.image, err, tc.kind)
		}
	}
	if boxes, err := rt.List(ctx); err != nil || len(boxes) != 0 {
		t.Fatalf("refused creates recorded boxes: %v, %v", boxes, err)
	}
	b, created, err := rt.GetOrCreate(ctx, opts("kept", "img"))
	if err != nil || !created {
		t.Fatalf("GetOrCreate of a new box: %v, %v", created, err)
	}
	// An existing box is returned whatever the other options say.
	again, created, err := rt.GetOrCreate(ctx, opts("kept", "@@@"))
	if err != nil || created || again.ID() != b.ID() {
		t.Fatalf("GetOrCreate of an existing box with a bad image: %v, %v, %v", again, created, err)
	}

	// A missing VMM plugin is the plugin host's typed error.
	testbin.WriteFile(t, filepath.Dir(e.config), "config.hcl", "vmm = \"nosuch\"\n")
	if _, err := e.runtime().Create(ctx, opts("z", "img")); !errors.Is(err, pluginhost.ErrPluginNotFound) {
		t.Errorf("Create with a missing vmm plugin: %v, want ErrPluginNotFound", err)
	}
}

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// TestCLIRefusesBadSizesLevelsAndTimeouts covers the small input defects of
// issue 8: each is refused with a clear error, and nothing is created.
func TestCLIRefusesBadSizesLevelsAndTimeouts(t *testing.T) {
	e := newEnv(t, "")
	e.ok("create", "--name", "ok", testImage)
	cases := []struct {
		args []string
		want string
	}{
		// An explicit 0 is not "the default".
		{[]string{"create", "--memory", "0", testImage}, "--memory 0: memory must be at least 64MiB"},
		{[]string{"create", "--cpus", "0", testImage}, "--cpus 0: a box needs between 1 and 256 vCPUs"},
		{[]string{"create", "--cpus", "257", testImage}, "between 1 and 256"},
		{[]string{"create", "--disk-size", "0", testImage}, "--disk-size 0: the writable disk must be at least 64MiB"},
		// 100 bytes used to round to 0MiB and then to the default.
		{[]string{"create", "--memory", "100", testImage}, "memory must be at least 64MiB"},
		{[]string{"create", "--memory", "64MiB-1", testImage}, "--memory 64MiB-1"},
		{[]string{"create", "--disk-size", "1MiB", testImage}, "at least 64MiB"},
		{[]string{"create", "--disk-size", "1PiB", testImage}, "1PiB is too large: the writable disk can be at most 16TiB"},
		{[]string{"create", "--disk-size", "100000EiB", testImage}, "too large"},
		{[]string{"run", "--memory", "0", testImage}, "memory must be at least 64MiB"},
		{[]string{"exec", "--timeout", "-1s", "ok", "--", "true"}, "--timeout -1s: the timeout cannot be negative"},
		{[]string{"--log-level", "bogus", "ls"}, "--log-level: unknown log level \"bogus\": use one of trace, debug, info, warn, error, off"},
	}
	for _, c := range cases {
		_, errs, code := e.cli(c.args...)
		if code != 125 || !strings.Contains(errs, c.want) {
			t.Errorf("boxctl %v: exit %d, stderr %q; want 125 and %q", c.args, code, errs, c.want)
		}
	}
	cmd := e.boxctlCmd(t.Context(), "ls")
	cmd.Env = append(cmd.Env, "BOXCTL_LOG=bogus")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "$BOXCTL_LOG: unknown log level \"bogus\"") {
		t.Errorf("BOXCTL_LOG=bogus: %v: %s", err, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.hcl")
	if err := os.WriteFile(bad, []byte("log_level = \"bogus\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := e.cli("--config", bad, "ls"); code != 125 || !strings.Contains(errs, "Invalid log_level") {
		t.Errorf("config log_level = bogus: exit %d %s", code, errs)
	}
	// The exec was refused before the box was started, and nothing else was made.
	if got := strings.TrimSpace(e.ok("ls", "-a", "--format", "{{.Name}} {{.Status}}")); got != "ok configured" {
		t.Errorf("boxes after refused commands: %q", got)
	}
	// Sizes that are whole MiB are kept; others are rounded down.
	e.ok("create", "--name", "odd", "--memory", "1GB", "--disk-size", "64MiB", testImage)
	if b := e.info(e.runtime(), "odd"); b.Config.MemoryMiB != 953 || b.Config.DiskSize != 64<<20 {
		t.Errorf("--memory 1GB --disk-size 64MiB gave %dMiB and %d bytes", b.Config.MemoryMiB, b.Config.DiskSize)
	}
}

// TestNamesCannotShadowBoxIDs: a name equal to another box's ID or short ID
// would make that ID resolve to the new box.
func TestNamesCannotShadowBoxIDs(t *testing.T) {
	e := newEnv(t, "")
	id := strings.TrimSpace(e.ok("create", "--name", "first", testImage))
	for _, name := range []string{id, id[:12], id[:20]} {
		_, errs, code := e.cli("create", "--name", name, testImage)
		if code != 125 || !strings.Contains(errs, "is the ID of box "+id[:12]) {
			t.Errorf("create --name %s: exit %d %s", name, code, errs)
		}
	}
	rt := e.runtime()
	if _, _, err := rt.GetOrCreate(t.Context(), core.BoxOptions{Name: id[:12], Config: model.BoxConfig{Image: testImage}}); err == nil {
		t.Error("GetOrCreate with a name equal to another box's short ID succeeded")
	}
	for _, ref := range []string{id, id[:12]} {
		if b := e.info(rt, ref); b.ID != id {
			t.Errorf("%s resolves to %s, want %s", ref, b.ID, id)
		}
	}
	// A shorter prefix stays a valid name, as in Docker.
	e.ok("create", "--name", id[:4], testImage)
}

// TestCreateRecordsNoCommandAsNone is defect 2 of issue 8: without a command
// the box keeps the image's cmd (nil, not an empty override), and
// --entrypoint follows Docker.
func TestCreateRecordsNoCommandAsNone(t *testing.T) {
	e := newEnv(t, "")
	e.ok("create", "--name", "plain", testImage)
	e.ok("create", "--name", "args", testImage, "--", "echo", "hi")
	e.ok("create", "--name", "ep", "--entrypoint", "/bin/echo", testImage)
	e.ok("create", "--name", "ep-args", "--entrypoint", "/bin/echo", testImage, "--", "a", "b")
	e.ok("create", "--name", "ep-clear", "--entrypoint", "", testImage)
	rt := e.runtime()
	image := &model.ImageConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"/bin/sh", "-c", "default"}}
	for name, want := range map[string]string{
		"plain":    "/entry /bin/sh -c default",
		"args":     "/entry echo hi",
		"ep":       "/bin/echo",
		"ep-args":  "/bin/echo a b",
		"ep-clear": "",
	} {
		b := e.info(rt, name) // read back through the state store
		b.Image = image
		if got := strings.Join(core.DefaultCommand(b), " "); got != want {
			t.Errorf("%s: default command %q, want %q (config %+v)", name, got, want, b.Config)
		}
	}
	if b := e.info(rt, "plain"); b.Config.Cmd != nil || b.Config.Entrypoint != nil {
		t.Errorf("create without a command recorded cmd %#v entrypoint %#v, want nil", b.Config.Cmd, b.Config.Entrypoint)
	}
}

package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/test/testbin"
)

func TestCLIFormatsAndInspect(t *testing.T) {
	e := newEnv(t, "")
	id := strings.TrimSpace(e.ok("create", "--name", "fmt", "-e", "A=1", "--memory", "128MiB", testImage, "--", "echo", "hi"))
	if len(id) != 32 {
		t.Fatalf("create printed %q, want a 32-character ID", id)
	}
	if out := e.ok("ls"); strings.Contains(out, "fmt") {
		t.Fatalf("ls without -a shows a configured box:\n%s", out)
	}
	table := e.ok("ls", "-a")
	for _, want := range []string{"BOX ID", "NAME", "STATUS", id[:12], "fmt", testImage, "Created"} {
		if !strings.Contains(table, want) {
			t.Errorf("ls -a table lacks %q:\n%s", want, table)
		}
	}
	if q := strings.TrimSpace(e.ok("ls", "-a", "-q")); q != id[:12] {
		t.Errorf("ls -q = %q", q)
	}
	var list []model.Box
	if err := json.Unmarshal([]byte(e.ok("ls", "-a", "--format", "json")), &list); err != nil || len(list) != 1 || list[0].Config.MemoryMiB != 128 {
		t.Fatalf("ls --format json: %v %+v", err, list)
	}
	if got := strings.TrimSpace(e.ok("ls", "-a", "--format", "{{.Name}}:{{.Status}}:{{.ShortID}}")); got != "fmt:configured:"+id[:12] {
		t.Errorf("template output %q", got)
	}
	_, errs, code := e.cli("ls", "--format", "{{.Nope}}")
	if code != 0 {
		// no boxes listed without -a: the template is never executed
		t.Errorf("ls with a template and no boxes: exit %d %s", code, errs)
	}
	_, errs, code = e.cli("ls", "-a", "--format", "{{.Nope}}")
	if code != 125 || !strings.Contains(errs, "--format") {
		t.Errorf("bad template: exit %d: %s", code, errs)
	}
	var insp []model.Box
	if err := json.Unmarshal([]byte(e.ok("inspect", "fmt")), &insp); err != nil || len(insp) != 1 || insp[0].ID != id || strings.Join(insp[0].Config.Cmd, " ") != "echo hi" || insp[0].Config.Env[0] != "A=1" {
		t.Fatalf("inspect: %v %+v", err, insp)
	}
	_, errs, code = e.cli("inspect", "fmt", "nosuch")
	if code != 125 || !strings.Contains(errs, `"nosuch"`) {
		t.Errorf("inspect of a missing box: exit %d %s", code, errs)
	}
}

func TestCLIErrorsAndExitCodes(t *testing.T) {
	e := newEnv(t, "")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"start", "ghost"}, `box "ghost": no box has this name or ID`},
		{[]string{"create"}, "requires at least 1 arg"},
		{[]string{"create", "--memory", "lots", "img"}, "--memory"},
		{[]string{"create", "--name", "bad name", "img"}, "invalid name"},
		{[]string{"rm"}, "give box names or IDs, or -a"},
		{[]string{"stop", "-t", "-1", "x"}, "cannot be negative"},
		{[]string{"nosuchcommand"}, "unknown command"},
	}
	for _, c := range cases {
		_, errs, code := e.cli(c.args...)
		if code != 125 || !strings.Contains(errs, c.want) {
			t.Errorf("boxctl %v: exit %d, stderr %q; want 125 and %q", c.args, code, errs, c.want)
		}
	}
}

func TestCLIRemoveAll(t *testing.T) {
	e := newEnv(t, "")
	e.ok("create", "--name", "a", testImage)
	e.ok("create", "--name", "b", testImage)
	e.ok("start", "b")
	_, errs, code := e.cli("rm", "-a")
	if code != 125 || !strings.Contains(errs, "is running") {
		t.Fatalf("rm -a with a running box: exit %d %s", code, errs)
	}
	if got := strings.Fields(e.ok("ls", "-a", "--format", "{{.Name}}")); len(got) != 1 || got[0] != "b" {
		t.Fatalf("after rm -a: %v", got)
	}
	e.ok("rm", "-a", "-f")
	if got := strings.TrimSpace(e.ok("ls", "-a", "-q")); got != "" {
		t.Fatalf("after rm -a -f: %q", got)
	}
	e.assertConsistent(e.runtime())
}

func TestDetachedBoxControlledFromAnotherProcess(t *testing.T) {
	e := newEnv(t, "")
	e.ok("create", "--name", "svc", testImage)
	e.ok("start", "svc") // this process exits; the box keeps running
	b := e.info(e.runtime(), "svc")
	if b.Status != model.StatusRunning || !b.Run.Detached || !pidAlive(b.Run.VM.PID) {
		t.Fatalf("detached box after its starter exited: %s", b.Status)
	}
	if out := e.ok("ls", "--format", "{{.Name}} {{.Status}}"); strings.TrimSpace(out) != "svc running" {
		t.Fatalf("ls from a second process: %q", out)
	}
	e.ok("stop", "svc")
	waitDead(t, b.Run.VM.PID, 5e9)
}

func TestCLIPluginFailuresAreClearAndLeaveStateConsistent(t *testing.T) {
	cases := []struct {
		name, hcl, want string
	}{
		{"crash", "plugin \"procvmm\" {\n  config {\n    crash_on = \"Plan\"\n  }\n}\n", "crashed during Plan"},
		{"hang", "plugin \"procvmm\" {\n  call_timeout = \"1s\"\n  config {\n    hang_on = \"Plan\"\n  }\n}\n", "did not answer Plan within 1s"},
		{"checksum", "plugin \"procvmm\" {\n  sha256 = \"" + strings.Repeat("ab", 32) + "\"\n}\n", "has sha256"},
		{"protocol", "vmm = \"badproto\"\n", "unsupported plugin protocol version"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hcl := c.hcl
			e := newEnv(t, "")
			// The box is created while the config is good; a plugin that
			// cannot even start is refused at create (see
			// TestCreateRefusesBoxesThatCanNeverStart), so the config
			// breaks afterwards.
			e.ok("create", "--name", "x", testImage)
			if strings.HasPrefix(hcl, "vmm") {
				// replace the vmm selection instead of adding a second one
				testbin.WriteFile(t, filepath.Dir(e.config), "config.hcl", hcl)
			} else {
				testbin.WriteFile(t, filepath.Dir(e.config), "config.hcl", "vmm = \"procvmm\"\n"+hcl)
			}
			_, errs, code := e.cli("start", "x")
			if code != 125 || !strings.Contains(errs, c.want) {
				t.Fatalf("start: exit %d, stderr:\n%s\nwant %q", code, errs, c.want)
			}
			// Back to what it was: Configured, or Stopped once the start
			// made its disk.
			b := e.info(e.runtime(), "x")
			want := model.StatusConfigured
			if b.DiskCreated {
				want = model.StatusStopped
			}
			if b.Status != want || !strings.Contains(b.Error, "start failed") {
				t.Fatalf("box after failed start: %s (disk made: %v) error %q", b.Status, b.DiskCreated, b.Error)
			}
			e.assertConsistent(e.runtime())
		})
	}
}

func TestCLIConfigShowAndValidate(t *testing.T) {
	e := newEnv(t, "defaults {\n  memory = \"1GiB\"\n}\n")
	show := e.ok("config", "show")
	for _, want := range []string{`vmm       = "procvmm"`, `memory              = "1GiB"`, "allow_host_loopback = false", "from " + e.config} {
		if !strings.Contains(show, want) {
			t.Errorf("config show lacks %q:\n%s", want, show)
		}
	}
	// The shown config is itself valid HCL boxctl accepts.
	shown := testbin.WriteFile(t, filepath.Dir(e.config), "shown.hcl", show)
	if _, errs, code := e.cli("--config", shown, "config", "show"); code != 0 {
		t.Fatalf("config show output does not load: %s", errs)
	}

	dir := filepath.Dir(e.config)
	bad := []struct {
		name, src, want string
	}{
		{"malformed.hcl", "vmm = \"qemu\n", "malformed.hcl:1:"},
		{"unknown.hcl", "defaults {\n  memroy = \"1G\"\n}\n", `unknown.hcl:2:3: error: Unsupported argument`},
		{"type.hcl", "defaults {\n  cpus = \"many\"\n}\n", "type.hcl:2:"},
		{"missing.hcl", fmt.Sprintf("vmm = \"procvmm\"\nplugin \"procvmm\" {\n  path = %q\n}\n", filepath.Join(dir, "nope", "boxctl-plugin-procvmm")), "missing.hcl:3:10: error: Plugin binary not usable"},
		{"pluginconf.hcl", "vmm = \"procvmm\"\nplugin \"procvmm\" {\n  config {\n    hang_onn = \"x\"\n  }\n}\n", `pluginconf.hcl:4:5: error: Unsupported argument`},
		// A plugin block is checked even when no role selects the plugin.
		{"unselected.hcl", "vmm = \"badproto\"\nplugin \"procvmm\" {\n  config {\n    hang_onn = \"x\"\n  }\n}\n", `unselected.hcl:4:5: error: Unsupported argument`},
	}
	for _, b := range bad {
		path := testbin.WriteFile(t, dir, b.name, b.src)
		_, errs, code := e.cli("config", "validate", path)
		if code != 125 || !strings.Contains(errs, b.want) {
			t.Errorf("validate %s: exit %d, stderr:\n%s\nwant %q", b.name, code, errs, b.want)
		}
	}
}

func TestCLIPluginsListAndVersion(t *testing.T) {
	e := newEnv(t, "")
	out := e.ok("plugins", "ls")
	for _, want := range []string{"procvmm", "vmm", "0.1.0", "state-file", "badproto"} {
		if !strings.Contains(out, want) {
			t.Errorf("plugins ls lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "unsupported plugin protocol") {
		t.Errorf("plugins ls does not flag the incompatible plugin:\n%s", out)
	}
	v := e.ok("version")
	if !strings.Contains(v, "boxctl ") || !strings.Contains(v, "plugin protocol: 1") {
		t.Errorf("version: %q", v)
	}
	if help := e.ok("stop", "--help"); !strings.Contains(help, "forced off") {
		t.Errorf("stop --help does not teach: %s", help)
	}
}

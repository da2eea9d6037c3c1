package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// stateFiles lists box id's saved-state directory.
func (e *env) stateFiles(id string) []string {
	names, _ := filepath.Glob(filepath.Join(e.home, "vmstate", id, "*"))
	hidden, _ := filepath.Glob(filepath.Join(e.home, "vmstate", id, ".*"))
	return append(names, hidden...)
}

// TestKillDuringMemoryCaptures kills boxctl (exit 99 through the core's
// crash-point hook, as kill -9 would) at every step of a checkpoint, a
// suspend and a fork of a running box (the procvmm double saves a "state"
// file: no process memory, but the same calls and files). The next command
// accepts the home; the source box runs on (its monitor resumed it; a
// suspend's state recorded before the VM was stopped is stale and dropped);
// no half-made checkpoint, fork or state file is left.
func TestKillDuringMemoryCaptures(t *testing.T) {
	e := newEnv(t, "")
	e.ok("run", "-d", "--name", "live", testImage)
	rt := e.runtime()
	id := e.info(rt, "live").ID
	for i, point := range core.CrashPoints() {
		op, step, _ := strings.Cut(point, ":")
		var args []string
		switch op {
		case "checkpoint":
			args = []string{"checkpoint", "live", fmt.Sprintf("k%d", i)}
		case "suspend":
			args = []string{"suspend", "live"}
		case "fork":
			args = []string{"fork", "live", "--name", fmt.Sprintf("f%d", i), "--count", "2"}
		default:
			continue
		}
		t.Run(point, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := e.boxctlCmd(ctx, args...)
			cmd.Env = append(cmd.Env, "BOXCTL_CRASH_AT="+point)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 99 {
				t.Fatalf("boxctl %v did not crash at %s: %v\n%s", args, point, err, out)
			}
			listed := e.ok("ls", "-a", "--format", "{{.Name}} {{.Status}} {{.Pending}}")
			if strings.Contains(listed, fmt.Sprintf("f%d-", i)) {
				t.Fatalf("half-made forks survive the next command:\n%s", listed)
			}
			b := e.info(e.runtime(), "live")
			if b.Pending != "" {
				t.Fatalf("the box is still pending %q", b.Pending)
			}
			if op == "suspend" && step == "saved" {
				// The state was recorded, but the VM was not stopped: its
				// monitor resumed it, so the state is stale and dropped.
				t.Log("killed after recording, before stopping the VM: the box runs on")
			}
			if b.Status != model.StatusRunning {
				t.Fatalf("the box is %s, want running", b.Status)
			}
			if cps := e.ok("checkpoint", "ls", "live"); strings.Contains(cps, fmt.Sprintf("k%d", i)) {
				t.Fatalf("a half-made checkpoint is listed:\n%s", cps)
			}
			if files := e.stateFiles(id); len(files) != 0 {
				t.Fatalf("state files left behind: %v", files)
			}
			e.assertConsistent(e.runtime())
			if got := strings.TrimSpace(e.ok("exec", "live", "--", "echo", "ok")); got != "ok" {
				t.Fatalf("exec after the crash: %q", got)
			}
		})
	}
	// Everything works afterwards.
	e.ok("checkpoint", "live", "after")
	e.ok("fork", "live", "--name", "after", "--count", "2")
	e.ok("suspend", "live")
	e.ok("start", "live")
	e.ok("rm", "-f", "after-1", "after-2", "live")
	if left, _ := filepath.Glob(filepath.Join(e.home, "vmstate", "*", "*")); len(left) != 0 {
		for _, l := range left {
			if !strings.Contains(l, "templates") {
				t.Fatalf("rm left saved states: %v", left)
			}
		}
	}
}

// TestMemoryCaptureFailures with the procvmm double: a VMM that fails
// SaveState leaves nothing (no checkpoint, no fork, a running box); a
// checkpoint whose file is damaged is refused before the box is touched;
// a suspended box whose state is damaged stays suspended and says how to
// get out; stop discards a suspended state.
func TestMemoryCaptureFailures(t *testing.T) {
	e := newEnv(t, "plugin \"procvmm\" {\n  config {\n    fail_on = \"SaveState\"\n  }\n}\n")
	e.ok("run", "-d", "--name", "b", testImage)
	for _, args := range [][]string{{"checkpoint", "b", "x"}, {"fork", "b", "--name", "fx"}, {"suspend", "b"}} {
		_, errs, code := e.cli(args...)
		if code == 0 || !strings.Contains(errs, "SaveState") {
			t.Fatalf("boxctl %v with a failing SaveState: exit %d, %s", args, code, errs)
		}
	}
	rt := e.runtime()
	b := e.info(rt, "b")
	if b.Status != model.StatusRunning || b.Pending != "" {
		t.Fatalf("after failed captures the box is %s, pending %q", b.Status, b.Pending)
	}
	if listed := e.ok("ls", "-a", "--format", "{{.Name}}"); strings.Contains(listed, "fx") {
		t.Fatalf("a failed fork left a box:\n%s", listed)
	}
	if files := e.stateFiles(b.ID); len(files) != 0 {
		t.Fatalf("failed captures left %v", files)
	}
	e.assertConsistent(rt)

	// A working VMM from here on.
	e2 := newEnv(t, "")
	e2.ok("run", "-d", "--name", "c", testImage)
	e2.ok("checkpoint", "c", "good")
	id := e2.info(e2.runtime(), "c").ID
	files := e2.stateFiles(id)
	if len(files) != 1 {
		t.Fatalf("want one state file, have %v", files)
	}
	data, _ := os.ReadFile(files[0])
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(files[0], data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, errs, code := e2.cli("checkpoint", "restore", "--force", "c", "good")
	if code == 0 || !strings.Contains(errs, `checkpoint "good"`) || !strings.Contains(errs, "corrupt") {
		t.Fatalf("restore of a corrupt checkpoint: exit %d, %s", code, errs)
	}
	if st := e2.info(e2.runtime(), "c").Status; st != model.StatusRunning {
		t.Fatalf("a refused restore left the box %s", st)
	}
	if _, errs, code := e2.cli("checkpoint", "restore", "c", "nope"); code == 0 || !strings.Contains(errs, `no checkpoint "nope"`) || !strings.Contains(errs, "good") {
		t.Fatalf("restore of a missing checkpoint: exit %d, %s", code, errs)
	}
	e2.ok("checkpoint", "rm", "c", "good")

	// A restore would replace the box's disk and lose its disk snapshots:
	// refused, naming them, with nothing changed.
	e2.ok("checkpoint", "c", "cp")
	e2.ok("snapshot", "create", "c", "keep")
	_, errs, code = e2.cli("checkpoint", "restore", "--force", "c", "cp")
	if code == 0 || !strings.Contains(errs, "disk snapshots (keep)") || !strings.Contains(errs, "snapshot rm c") {
		t.Fatalf("restore of a checkpoint over disk snapshots: exit %d, %s", code, errs)
	}
	if st := e2.info(e2.runtime(), "c").Status; st != model.StatusRunning {
		t.Fatalf("a refused restore left the box %s", st)
	}
	if got := e2.ok("snapshot", "ls", "c"); !strings.Contains(got, "keep") {
		t.Fatalf("the snapshot is gone after a refused restore:\n%s", got)
	}
	e2.ok("snapshot", "rm", "c", "keep")
	e2.ok("checkpoint", "restore", "--force", "c", "cp")
	e2.ok("checkpoint", "rm", "c", "cp")

	// A suspended box whose state file is damaged stays suspended.
	e2.ok("suspend", "c")
	if _, errs, code := e2.cli("rm", "c"); code == 0 || !strings.Contains(errs, "suspended") || !strings.Contains(errs, "force") {
		t.Fatalf("rm of a suspended box without force: exit %d, %s", code, errs)
	}
	if listed := e2.ok("ls", "--format", "{{.Name}} {{.State}}"); !strings.Contains(listed, "c Suspended") {
		t.Fatalf("ls shows:\n%s", listed)
	}
	files = e2.stateFiles(id)
	if len(files) != 1 {
		t.Fatalf("want the suspended state's file, have %v", files)
	}
	// The same size, one byte changed: only the checksum, verified while
	// the VM starts, finds it; the VM is stopped again.
	data, _ = os.ReadFile(files[0])
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(files[0], data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, errs, code = e2.cli("start", "c")
	if code == 0 || !strings.Contains(errs, "corrupt") || !strings.Contains(errs, "stays suspended") || !strings.Contains(errs, "boxctl stop c") {
		t.Fatalf("start of a box whose suspended state is damaged: exit %d, %s", code, errs)
	}
	if st := e2.info(e2.runtime(), "c").Status; st != model.StatusSuspended {
		t.Fatalf("after a failed resume the box is %s", st)
	}
	// Commit and snapshot restore refuse a suspended box; stop discards its
	// state and the box boots afresh.
	if _, errs, code := e2.cli("commit", "c", "oci-layout:"+filepath.Join(t.TempDir(), "x")); code == 0 || !strings.Contains(errs, "suspended") {
		t.Fatalf("commit of a suspended box: exit %d, %s", code, errs)
	}
	e2.ok("stop", "c")
	if st := e2.info(e2.runtime(), "c").Status; st != model.StatusStopped {
		t.Fatalf("stop of a suspended box left it %s", st)
	}
	if files := e2.stateFiles(id); len(files) != 0 {
		t.Fatalf("stop left the suspended state: %v", files)
	}
	e2.ok("start", "c")
	if got := e2.info(e2.runtime(), "c").Run.RestoredFrom; got != "" {
		t.Fatalf("after stop, start restored from %q", got)
	}
	e2.assertConsistent(e2.runtime())
}

// TestBootTemplatesWithTheDouble: the first start of an image makes its
// template, the next new box starts from it (and is re-identified as
// itself), a damaged template gives way to a cold boot with a notice and is
// replaced, --cold and boot_templates = false boot, and image prune removes
// the templates.
func TestBootTemplatesWithTheDouble(t *testing.T) {
	e := newEnv(t, "")
	e.ok("run", "--rm", testImage, "--", "true")
	if out := e.ok("image", "templates"); strings.Count(out, testImage) != 1 {
		t.Fatalf("after the first run, templates:\n%s", out)
	}
	e.ok("create", "--name", "t2", testImage)
	e.ok("start", "t2")
	rt := e.runtime()
	b := e.info(rt, "t2")
	if !strings.Contains(b.Run.RestoredFrom, "boot template") {
		t.Fatalf("a new box of the image was not started from its template (restored from %q)", b.Run.RestoredFrom)
	}
	if got := strings.TrimSpace(e.ok("exec", "t2", "--", "echo", "ok")); got != "ok" {
		t.Fatalf("exec in a box started from the template: %q", got)
	}
	files, _ := filepath.Glob(filepath.Join(e.home, "vmstate", "templates", "*.vmstate"))
	if len(files) != 1 {
		t.Fatalf("template files: %v", files)
	}
	if err := os.WriteFile(files[0], []byte("damaged"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errs, code := e.cli("run", "--name", "t3", testImage, "--", "true")
	if code != 0 || !strings.Contains(errs, "boot template") || !strings.Contains(errs, "cold") {
		t.Fatalf("run with a damaged template: exit %d, stderr %q (want a notice and a cold boot)", code, errs)
	}
	if got := e.info(e.runtime(), "t3").Run.RestoredFrom; got != "" {
		t.Fatalf("the box of a damaged template was restored from %q", got)
	}
	after, _ := filepath.Glob(filepath.Join(e.home, "vmstate", "templates", "*.vmstate"))
	if len(after) != 1 || after[0] == files[0] {
		t.Fatalf("the damaged template was not replaced by a new one: %v", after)
	}
	e.ok("create", "--name", "t4", testImage)
	e.ok("start", "--cold", "t4")
	if got := e.info(e.runtime(), "t4").Run.RestoredFrom; got != "" {
		t.Fatalf("start --cold restored from %q", got)
	}
	e.ok("rm", "-f", "t2", "t3", "t4")
	e.ok("image", "prune", "-a")
	if out := e.ok("image", "templates"); strings.Contains(out, testImage) {
		t.Fatalf("image prune left templates:\n%s", out)
	}
	if left, _ := filepath.Glob(filepath.Join(e.home, "vmstate", "templates", "*")); len(left) != 0 {
		t.Fatalf("image prune left template files: %v", left)
	}
	e.assertConsistent(e.runtime())

	off := newEnv(t, "defaults {\n  boot_templates = false\n}\n")
	off.ok("run", "--rm", testImage, "--", "true")
	if out := off.ok("image", "templates"); strings.Contains(out, testImage) {
		t.Fatalf("boot_templates = false made a template:\n%s", out)
	}
}

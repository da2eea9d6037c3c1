package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/test/testbin"
)

// autoEnv is an env whose config says vmm = "auto", with the procvmm test
// double standing in for both candidates: as "libkrun" through a wrapper
// script that notes every start in a marker file, and as "qemu".
// libkrunUnusable, when set, makes the "libkrun" double say it cannot run
// VMs here, for that reason.
type autoEnv struct {
	*env
	marker string
}

func newAutoEnv(t *testing.T) *autoEnv {
	e := newEnv(t, "")
	dir := filepath.Dir(e.config)
	marker := filepath.Join(dir, "libkrun-started")
	testbin.WriteFile(t, dir, "libkrun-double", fmt.Sprintf("#!/bin/sh\necho started >> %q\nexec %q \"$@\"\n", marker, filepath.Join(e.bin, "boxctl-plugin-procvmm")))
	if err := os.Chmod(filepath.Join(dir, "libkrun-double"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &autoEnv{env: e, marker: marker}
}

func (e *autoEnv) configure(libkrunUnusable string) {
	dir := filepath.Dir(e.config)
	libkrunConfig := ""
	if libkrunUnusable != "" {
		libkrunConfig = fmt.Sprintf("host_unusable = %q", libkrunUnusable)
	}
	testbin.WriteFile(e.t, dir, "config.hcl", fmt.Sprintf(`vmm = "auto"
plugin "libkrun" {
  path = %q
  config {
    %s
  }
}
plugin "qemu" {
  path = %q
}
`, filepath.Join(dir, "libkrun-double"), libkrunConfig, filepath.Join(e.bin, "boxctl-plugin-procvmm")))
}

func (e *autoEnv) libkrunStarts() int {
	b, err := os.ReadFile(e.marker)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.Count(string(b), "started")
}

func (e *autoEnv) inspect(name string) model.Box {
	e.t.Helper()
	var boxes []model.Box
	if err := json.Unmarshal([]byte(e.ok("inspect", name)), &boxes); err != nil || len(boxes) != 1 {
		e.t.Fatalf("inspect %s: %v", name, err)
	}
	return boxes[0]
}

// info is `boxctl info --format json`.
type autoInfo struct {
	VMM struct {
		Configured, Chosen, Accelerator, Summary string
		Candidates                               []struct {
			Name, Reason string
			Usable       bool
		}
	}
}

func (e *autoEnv) hostInfo() autoInfo {
	e.t.Helper()
	var i autoInfo
	out := e.ok("info", "--format", "json")
	if err := json.Unmarshal([]byte(out), &i); err != nil {
		e.t.Fatalf("info --format json: %v\n%s", err, out)
	}
	return i
}

// vmm = "auto" takes the first usable candidate and says why; a box keeps
// the VMM it first started on when what "auto" chooses changes; ls and
// inspect start no VMM plugin.
func TestAutoVMMChoosesPerHostAndBoxesKeepTheirVMM(t *testing.T) {
	e := newAutoEnv(t)
	e.configure("KVM runs guest code 1000x too slowly (test double)")

	i := e.hostInfo()
	if i.VMM.Configured != "auto" || i.VMM.Chosen != "qemu" || i.VMM.Accelerator != "process" || len(i.VMM.Candidates) != 2 ||
		i.VMM.Candidates[0].Usable || !strings.Contains(i.VMM.Candidates[0].Reason, "1000x too slowly") {
		t.Fatalf("info: %+v", i)
	}
	table := e.ok("info")
	for _, want := range []string{"vmm:     auto → qemu (process)", "libkrun: not usable: KVM runs guest code 1000x too slowly", "qemu: usable (process)"} {
		if !strings.Contains(table, want) {
			t.Errorf("info lacks %q:\n%s", want, table)
		}
	}

	e.ok("create", "--name", "old", "--memory", "128MiB", testImage, "--", "sleep", "1000")
	e.ok("start", "old")
	before := e.libkrunStarts()
	if before == 0 {
		t.Fatal("the libkrun candidate was never asked")
	}
	b := e.inspect("old")
	if b.VMM != "qemu" || b.Run == nil || b.Run.VMM != "qemu" || b.Run.Accelerator != "process" {
		t.Fatalf("box old: vmm %q, run %+v", b.VMM, b.Run)
	}
	e.ok("ls", "-a")
	e.inspect("old")
	if n := e.libkrunStarts(); n != before {
		t.Errorf("ls and inspect started a VMM plugin (%d starts of libkrun, %d before)", n, before)
	}

	// Now libkrun is usable: new boxes get it, the old box stays on qemu.
	e.configure("")
	if i := e.hostInfo(); i.VMM.Chosen != "libkrun" || len(i.VMM.Candidates) != 1 {
		t.Fatalf("info once libkrun is usable: %+v", i)
	}
	if out := e.ok("exec", "old", "--", "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Errorf("exec in old: %q", out)
	}
	e.ok("stop", "old")
	e.ok("start", "old")
	if b := e.inspect("old"); b.VMM != "qemu" || b.Run.VMM != "qemu" || b.Status != model.StatusRunning {
		t.Errorf("box old after a restart under a config choosing libkrun: vmm %q, run vmm %q, %s", b.VMM, b.Run.VMM, b.Status)
	}
	// A clone's disk came from old's VMM: it stays on it.
	e.ok("stop", "old")
	e.ok("clone", "old", "--name", "copy")
	e.ok("start", "copy")
	if b := e.inspect("copy"); b.VMM != "qemu" || b.Run.VMM != "qemu" {
		t.Errorf("clone of old: vmm %q, run vmm %q; want qemu", b.VMM, b.Run.VMM)
	}
	e.ok("stop", "copy")
	e.ok("create", "--name", "new", "--memory", "128MiB", testImage, "--", "sleep", "1000")
	e.ok("start", "new")
	if b := e.inspect("new"); b.VMM != "libkrun" || b.Run.VMM != "libkrun" {
		t.Errorf("box new: vmm %q, run vmm %q; want libkrun", b.VMM, b.Run.VMM)
	}
	e.ok("stop", "new")
}

// With no libkrun plugin at all, auto picks qemu and says why.
func TestAutoVMMWithoutLibkrun(t *testing.T) {
	e := newEnv(t, "")
	testbin.WriteFile(t, filepath.Dir(e.config), "config.hcl", fmt.Sprintf("vmm = \"auto\"\nplugin \"qemu\" {\n  path = %q\n}\n", filepath.Join(e.bin, "boxctl-plugin-procvmm")))
	out := e.ok("info")
	if !strings.Contains(out, "auto → qemu (process)") || !strings.Contains(out, "libkrun: not found: plugin \"libkrun\": plugin binary not found") {
		t.Errorf("info:\n%s", out)
	}
	e.ok("create", "--name", "x", "--memory", "128MiB", testImage, "--", "sleep", "1000")
	e.ok("start", "x")
	ae := &autoEnv{env: e}
	if b := ae.inspect("x"); b.VMM != "qemu" || b.Run.Accelerator != "process" {
		t.Errorf("box x: vmm %q, accelerator %q", b.VMM, b.Run.Accelerator)
	}
	e.ok("stop", "x")
}

// With no candidate usable, create refuses the box and says why for each.
func TestAutoVMMWithNoUsableVMMRefusesCreate(t *testing.T) {
	e := newEnv(t, "")
	testbin.WriteFile(t, filepath.Dir(e.config), "config.hcl", fmt.Sprintf("vmm = \"auto\"\nplugin \"qemu\" {\n  path = %q\n  config {\n    host_unusable = \"qemu-system-x86_64 not found (test double)\"\n  }\n}\n", filepath.Join(e.bin, "boxctl-plugin-procvmm")))
	_, errs, code := e.cli("create", "--name", "x", testImage)
	if code == 0 || !strings.Contains(errs, "no usable VMM plugin") || !strings.Contains(errs, "libkrun: plugin") || !strings.Contains(errs, "qemu-system-x86_64 not found (test double)") {
		t.Errorf("create with no usable VMM: exit %d\n%s", code, errs)
	}
	if out := e.ok("ls", "-a", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("a box was left: %q", out)
	}
}

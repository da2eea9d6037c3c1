package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/core/model"
)

// With the built-in defaults (vmm = "auto") and no libkrun plugin, a real
// box runs on qemu, with the accelerator `boxctl info` says new boxes get
// (on hosts whose KVM fails the probe, tcg), and inspect records both.
func TestAutoVMMRunsARealBoxOnQEMU(t *testing.T) {
	e := newEnv(t)
	var info struct {
		VMM struct {
			Configured, Chosen, Accelerator, Summary string
		}
	}
	if err := json.Unmarshal([]byte(e.ok("info", "--format", "json")), &info); err != nil {
		t.Fatal(err)
	}
	t.Logf("info: %s", info.VMM.Summary)
	if info.VMM.Configured != "auto" || info.VMM.Chosen != "qemu" || (info.VMM.Accelerator != "kvm" && info.VMM.Accelerator != "tcg") {
		t.Fatalf("info: %+v", info.VMM)
	}
	if !strings.Contains(info.VMM.Summary, "libkrun: plugin \"libkrun\": plugin binary not found") {
		t.Errorf("the summary does not say why libkrun was skipped: %s", info.VMM.Summary)
	}
	e.ok("run", "-d", "--name", "auto", e.image)
	defer e.ok("rm", "-f", "auto")
	var boxes []model.Box
	if err := json.Unmarshal([]byte(e.ok("inspect", "auto")), &boxes); err != nil || len(boxes) != 1 {
		t.Fatalf("inspect: %v", err)
	}
	b := boxes[0]
	if b.VMM != "qemu" || b.Run == nil || b.Run.VMM != "qemu" || b.Run.Accelerator != info.VMM.Accelerator {
		t.Errorf("box: vmm %q, run %+v; want qemu with %s", b.VMM, b.Run, info.VMM.Accelerator)
	}
}

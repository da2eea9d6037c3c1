package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSnapshotsAndClonesOfARunningBox on real VMs: a snapshot of a running
// box, then writes, then a restore brings the old content back; a clone
// --count 3 of a running box that has just written a file gives three
// boxes with the file, whose writes are their own.
func TestSnapshotsAndClonesOfARunningBox(t *testing.T) {
	e := newEnv(t)
	e.ok("run", "-d", "--name", "src", e.image)
	e.ok("exec", "src", "--", "sh", "-c", "echo v1 > /state.txt && rm /bin/vi")

	// A snapshot of the running box: it keeps running, and says how long
	// it was held.
	out, errs, code := e.run(nil, "snapshot", "create", "src", "s1")
	if code != 0 || strings.TrimSpace(out) != "s1" || !strings.Contains(errs, "frozen") {
		t.Fatalf("snapshot create of a running box: exit %d, out %q, err %q%s", code, out, errs, e.consoleTail())
	}
	e.ok("exec", "src", "--", "sh", "-c", "echo v2 > /state.txt && touch /after-s1")
	if got := e.ok("exec", "src", "--", "cat", "/state.txt"); got != "v2\n" {
		t.Fatalf("after the snapshot the box reads %q, want its own later write", got)
	}
	checkChain(t, e)

	// A clone --count 3 of the running box right after a write.
	e.ok("exec", "src", "--", "sh", "-c", "echo fresh > /just-written")
	if got := strings.Fields(e.ok("clone", "src", "--name", "c", "--count", "3", "--start")); strings.Join(got, " ") != "c-1 c-2 c-3" {
		t.Fatalf("clone printed %v", got)
	}
	for _, c := range []string{"c-1", "c-2", "c-3"} {
		if got := e.ok("exec", c, "--", "sh", "-c", "cat /just-written /state.txt; ls /bin/vi 2>&1 || true"); !strings.HasPrefix(got, "fresh\nv2\n") || !strings.Contains(got, "No such file") {
			t.Fatalf("clone %s reads %q, want the source's state (file written just before, vi deleted)", c, got)
		}
	}
	e.ok("exec", "c-1", "--", "sh", "-c", "echo mine > /just-written")
	for _, c := range []string{"src", "c-2", "c-3"} {
		if got := e.ok("exec", c, "--", "cat", "/just-written"); got != "fresh\n" {
			t.Fatalf("%s sees c-1's write: %q", c, got)
		}
	}
	e.ok("exec", "src", "--", "sh", "-c", "echo src-only > /just-written")
	if got := e.ok("exec", "c-2", "--", "cat", "/just-written"); got != "fresh\n" {
		t.Fatalf("c-2 sees the source's later write: %q", got)
	}
	e.ok("rm", "-f", "c-1", "c-2", "c-3")

	// A live export (from a snapshot taken in the bracket) imports as a
	// box with the state of that moment.
	archive := filepath.Join(t.TempDir(), "src.boxar")
	e.ok("export", "src", archive)
	e.ok("import", "--name", "copy", archive)
	e.ok("start", "copy")
	if got := e.ok("exec", "copy", "--", "cat", "/just-written", "/state.txt"); got != "src-only\nv2\n" {
		t.Fatalf("the imported live export reads %q", got)
	}
	e.ok("rm", "-f", "copy")
	if out := e.ok("snapshot", "ls", "src"); strings.Contains(out, "export-") {
		t.Fatalf("the live export left its snapshot:\n%s", out)
	}

	// Restore needs the box stopped (or --force); the old content is back.
	if _, errs, code := e.run(nil, "snapshot", "restore", "src", "s1"); code == 0 || !strings.Contains(errs, "--force") {
		t.Fatalf("restore of a running box without --force: exit %d, %s", code, errs)
	}
	e.ok("snapshot", "restore", "--force", "src", "s1")
	e.ok("start", "src")
	if got := e.ok("exec", "src", "--", "sh", "-c", "cat /state.txt; ls /after-s1 /just-written 2>&1 || true"); !strings.HasPrefix(got, "v1\n") || strings.Count(got, "No such file") != 2 {
		t.Fatalf("after restoring s1 the box reads %q, want v1 and neither later file", got)
	}
	e.ok("rm", "-f", "src")
}

// checkChain has qemu-img check every file of the box's disk chain while the
// box runs on it (read-only, with -U: QEMU holds the lock).
func checkChain(t *testing.T, e *env) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(e.home, "plugins-data", "qcow2", "disks", "*.qcow2"))
	for _, f := range files {
		if out, err := exec.Command("qemu-img", "check", "-U", f).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img check %s: %v\n%s", f, err, out)
		}
	}
}

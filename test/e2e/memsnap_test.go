package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/test/images/busybox"
)

// counterScript counts in the shell's memory and writes the count to a
// file: after a restore the count goes on from where it was only if the
// process (its memory) was restored, not restarted.
// The count goes to a temporary file renamed over the count, so a reader
// never sees the file truncated.
const counterScript = `mkdir -p /run; i=0; while true; do i=$((i+1)); echo $i > /run/count.tmp; mv /run/count.tmp /run/count; sleep 0.1; done`

// count reads box's counter; -1 before the counter wrote its file.
func (e *env) count(box string) int {
	e.t.Helper()
	out := strings.TrimSpace(e.ok("exec", box, "--", "sh", "-c", "cat /run/count 2>/dev/null || echo -1"))
	n, err := strconv.Atoi(out)
	if err != nil {
		e.t.Fatalf("%s: /run/count holds %q", box, out)
	}
	return n
}

// countsOn waits until box's counter passes after.
func (e *env) countsOn(box string, after int) int {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := e.count(box)
		if n > after {
			return n
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: the counter stays at %d (want past %d)%s", box, n, after, e.consoleTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// field renders tmpl (an ls --format template) for box name.
func (e *env) field(name, tmpl string) string {
	e.t.Helper()
	out := e.ok("ls", "-a", "--format", `{{if eq .Name "`+name+`"}}`+tmpl+`{{end}}`)
	return strings.TrimSpace(strings.ReplaceAll(out, "\n", ""))
}

func (e *env) boxID(name string) string {
	e.t.Helper()
	return e.field(name, "{{.ID}}")
}

func (e *env) restoredFrom(name string) string {
	e.t.Helper()
	return e.field(name, "{{.Run.RestoredFrom}}")
}

// TestSuspendResumeForkOnRealVMs: a process counting in memory keeps
// counting from where it was after suspend → start and in each of three
// forks; the forks' writes are their own, their /dev/urandom differs, and
// each has its own host name.
func TestSuspendResumeForkOnRealVMs(t *testing.T) {
	e := newEnv(t)
	e.ok("run", "-d", "--name", "src", e.image, "--", "sh", "-c", counterScript)
	before := e.countsOn("src", 5)

	// Suspend: the VM goes, the box is listed as suspended.
	e.ok("suspend", "src")
	if out := e.ok("ls", "--format", "{{.Name}} {{.State}}"); !strings.Contains(out, "src Suspended") {
		t.Fatalf("ls after suspend:\n%s", out)
	}
	if out, errs, code := e.run(nil, "exec", "src", "--", "true"); code != 0 {
		t.Logf("exec on a suspended box resumes it? exit %d %s %s", code, out, errs)
	}
	// (exec resumed it, like start would.) Suspend again and start.
	if st := e.field("src", "{{.Status}}"); st == "running" {
		e.ok("suspend", "src")
	}
	e.ok("start", "src")
	if got := e.restoredFrom("src"); got != "its suspended state" {
		t.Fatalf("after start the run says it was restored from %q", got)
	}
	resumed := e.count("src")
	if resumed < before {
		t.Fatalf("after suspend and start the counter is %d, it was %d before: the process restarted", resumed, before)
	}
	e.countsOn("src", resumed)

	// Fork three times from this instant.
	e.ok("exec", "src", "--", "sh", "-c", "echo shared > /forked-file")
	atFork := e.count("src")
	names := strings.Fields(e.ok("fork", "src", "--count", "3", "--name", "f"))
	if strings.Join(names, " ") != "f-1 f-2 f-3" {
		t.Fatalf("fork printed %v", names)
	}
	srcHost := strings.TrimSpace(e.ok("exec", "src", "--", "hostname"))
	randoms := map[string]string{}
	for _, f := range names {
		n := e.countsOn(f, atFork)
		if n < atFork {
			t.Fatalf("%s counts from %d, the source was at %d when forked", f, n, atFork)
		}
		id := e.boxID(f)
		host := strings.TrimSpace(e.ok("exec", f, "--", "hostname"))
		if host != id[:12] || host == srcHost {
			t.Fatalf("%s: hostname %q, want its own short ID %s (source: %s)", f, host, id[:12], srcHost)
		}
		if got := strings.TrimSpace(e.ok("exec", f, "--", "cat", "/etc/hostname")); got != host {
			t.Fatalf("%s: /etc/hostname %q, hostname %q", f, got, host)
		}
		if got := e.ok("exec", f, "--", "cat", "/forked-file"); got != "shared\n" {
			t.Fatalf("%s: reads %q from a file the source wrote before the fork", f, got)
		}
		r := strings.TrimSpace(e.ok("exec", f, "--", "sh", "-c", "head -c 32 /dev/urandom | od -An -tx1"))
		for other, v := range randoms {
			if v == r {
				t.Fatalf("%s and %s read the same bytes from /dev/urandom: %s", f, other, r)
			}
		}
		randoms[f] = r
	}
	e.ok("exec", "f-1", "--", "sh", "-c", "echo mine > /forked-file")
	for _, b := range []string{"src", "f-2", "f-3"} {
		if got := e.ok("exec", b, "--", "cat", "/forked-file"); got != "shared\n" {
			t.Fatalf("%s sees f-1's write: %q", b, got)
		}
	}
	e.countsOn("src", atFork)
	e.ok("rm", "-f", "f-1", "f-2", "f-3", "src")
}

// TestCheckpointsAndBootTemplatesOnRealVMs: a checkpoint restores a box's
// processes and disk as they were; a box of an image whose first boot made
// a template starts from it, runs the image's own command and is its own
// box; a damaged checkpoint and a changed kernel are refused clearly, and
// a template whose kernel changed falls back to a cold boot.
func TestCheckpointsAndBootTemplatesOnRealVMs(t *testing.T) {
	e := newEnv(t)
	// An image whose own command reports who the box is.
	layout := filepath.Join(filepath.Dir(e.home), "whoami")
	if _, err := busybox.BuildLayout(layout, busybox.Options{Config: &busybox.Config{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo host=$(hostname) file=$(cat /etc/hostname)"},
	}}); err != nil {
		t.Fatal(err)
	}
	who := "oci-layout:" + layout

	// The first box of the image boots and makes the template; the next
	// ones start from it.
	first := e.ok("run", "--name", "w1", who)
	if id := e.boxID("w1"); first != "host="+id[:12]+" file="+id[:12]+"\n" {
		t.Fatalf("first box of the image printed %q, want its own short ID %s", first, id[:12])
	}
	if out := e.ok("image", "templates"); !strings.Contains(out, layout) {
		t.Fatalf("no boot template listed after the first boot:\n%s", out)
	}
	second := e.ok("run", "--name", "w2", who)
	if got := e.restoredFrom("w2"); !strings.Contains(got, "boot template") {
		t.Fatalf("the second box of the image was not started from the template (restored from %q)", got)
	}
	if id := e.boxID("w2"); second != "host="+id[:12]+" file="+id[:12]+"\n" {
		t.Fatalf("a box started from the template printed %q, want its own short ID %s", second, id[:12])
	}
	e.ok("rm", "w1", "w2")
	// --cold boots.
	e.ok("run", "--name", "w3", "--cold", who)
	if got := e.restoredFrom("w3"); got != "" {
		t.Fatalf("run --cold was restored from %q", got)
	}
	e.ok("rm", "w3")

	// A checkpoint of a running box, then more work, then a restore.
	e.ok("run", "-d", "--name", "c", e.image, "--", "sh", "-c", counterScript)
	e.ok("exec", "c", "--", "sh", "-c", "echo v1 > /state.txt")
	e.countsOn("c", 3)
	out, errs, code := e.run(nil, "checkpoint", "c", "cp1")
	if code != 0 || strings.TrimSpace(out) != "cp1" || !strings.Contains(errs, "paused") {
		t.Fatalf("checkpoint: exit %d, out %q, err %q", code, out, errs)
	}
	atCheckpoint := e.count("c")
	ls := e.ok("checkpoint", "ls", "c")
	if !strings.Contains(ls, "cp1") || !strings.Contains(ls, "kernel") {
		t.Fatalf("checkpoint ls does not list cp1 with its inputs:\n%s", ls)
	}
	e.ok("exec", "c", "--", "sh", "-c", "echo v2 > /state.txt")
	later := e.countsOn("c", atCheckpoint+20)
	e.ok("checkpoint", "restore", "--force", "c", "cp1")
	n := e.count("c")
	if n >= later || n+10 < atCheckpoint {
		t.Fatalf("after restoring cp1 the counter is %d: it was %d at the checkpoint and %d just before the restore", n, atCheckpoint, later)
	}
	if got := e.ok("exec", "c", "--", "cat", "/state.txt"); got != "v1\n" {
		t.Fatalf("after restoring cp1 the disk reads %q, want v1", got)
	}
	e.countsOn("c", n)

	// A damaged checkpoint is refused, naming it; the box is left as it was.
	e.ok("checkpoint", "c", "cp2")
	stateFiles, _ := filepath.Glob(filepath.Join(e.home, "vmstate", e.boxID("c"), "*.vmstate"))
	if len(stateFiles) != 2 {
		t.Fatalf("want the state files of cp1 and cp2, have %v", stateFiles)
	}
	for _, f := range stateFiles {
		st, _ := os.Stat(f)
		if err := os.Truncate(f, st.Size()/2); err != nil {
			t.Fatal(err)
		}
	}
	_, errs, code = e.run(nil, "checkpoint", "restore", "--force", "c", "cp2")
	if code == 0 || !strings.Contains(errs, `checkpoint "cp2"`) || !strings.Contains(errs, "checkpoint rm") {
		t.Fatalf("restore of a truncated checkpoint: exit %d, %s", code, errs)
	}
	if st := e.field("c", "{{.Status}}"); st != "running" {
		t.Fatalf("a refused restore left the box %s", st)
	}
	e.ok("checkpoint", "rm", "c", "cp1", "cp2")
	if left, _ := filepath.Glob(filepath.Join(e.home, "vmstate", e.boxID("c"), "*")); len(left) != 0 {
		t.Fatalf("checkpoint rm left %v", left)
	}

	// A changed kernel: checkpoints taken with the old one are refused, and
	// the image's template gives way to a cold boot with a notice.
	e.ok("checkpoint", "c", "cp3")
	// Outside the test's 0700 directory: a root boxctl's confined QEMU
	// must be able to read the kernel.
	newGuest, err := os.MkdirTemp("", "guest2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(newGuest) })
	if err := os.Chmod(newGuest, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vmlinuz", "initramfs", "vmlinux"} {
		data, err := os.ReadFile(filepath.Join(e.guest, f))
		if err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(newGuest, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.guest = newGuest
	_, errs, code = e.run(nil, "checkpoint", "restore", "--force", "c", "cp3")
	if code == 0 || !strings.Contains(errs, "other inputs") || !strings.Contains(errs, newGuest) || !strings.Contains(errs, "checkpoint rm") {
		t.Fatalf("restore of a checkpoint taken with another kernel: exit %d, %s", code, errs)
	}
	if st := e.field("c", "{{.Status}}"); st != "running" {
		t.Fatalf("a refused restore left the box %s", st)
	}
	out, errs, code = e.run(nil, "run", "--name", "w4", who)
	if code != 0 {
		t.Fatalf("run after the kernel changed: exit %d\n%s\n%s", code, out, errs)
	}
	if got := e.restoredFrom("w4"); got != "" {
		t.Fatalf("a box of an image whose template is stale was restored from %q", got)
	}
	if id := e.boxID("w4"); out != "host="+id[:12]+" file="+id[:12]+"\n" {
		t.Fatalf("cold-booted box printed %q", out)
	}
	e.ok("rm", "-f", "c", "w4")
	// image prune drops the (new) template.
	e.ok("image", "prune", "-a")
	if out := e.ok("image", "templates"); strings.Contains(out, layout) {
		t.Fatalf("image prune left the template:\n%s", out)
	}
}

// TestCheckpointOnAFullDisk: the state directory is a small filesystem that
// fills up while a checkpoint is written: the checkpoint fails saying so,
// nothing of it is left (no file, no listing), and the box runs on.
func TestCheckpointOnAFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs for the state directory")
	}
	e := newEnv(t)
	e.ok("run", "-d", "--cold", "--name", "c", e.image, "--", "sh", "-c", counterScript)
	dir := filepath.Join(e.home, "vmstate")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s)", err, out)
	}
	t.Cleanup(func() {
		_, _, _ = e.run(nil, "rm", "-a", "-f")
		_ = exec.Command("umount", "-l", dir).Run()
	})
	before := e.countsOn("c", 3)
	_, errs, code := e.run(nil, "checkpoint", "c", "big")
	if code == 0 || !strings.Contains(strings.ToLower(errs), "space") {
		t.Fatalf("checkpoint onto a full filesystem: exit %d, %s", code, errs)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*", "*")); len(left) != 0 {
		t.Fatalf("a failed checkpoint left %v", left)
	}
	if hidden, _ := filepath.Glob(filepath.Join(dir, "*", ".*")); len(hidden) != 0 {
		t.Fatalf("a failed checkpoint left %v", hidden)
	}
	if out := e.ok("checkpoint", "ls", "c"); strings.Contains(out, "big") {
		t.Fatalf("a failed checkpoint is listed:\n%s", out)
	}
	if st := e.field("c", "{{.Status}}"); st != "running" {
		t.Fatalf("after a failed checkpoint the box is %s", st)
	}
	e.countsOn("c", before)
}

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// inspected is the part of `boxctl inspect` these tests read.
type inspected struct {
	ID         string `json:"id"`
	Status     string `json:"status"`
	DiskID     string `json:"disk_id"`
	SandboxUID uint32 `json:"sandbox_uid"`
	Run        *struct {
		VM struct {
			PID int `json:"pid"`
		} `json:"vm"`
	} `json:"run"`
}

func (e *env) inspect(name string) inspected {
	e.t.Helper()
	var out []inspected
	if err := json.Unmarshal([]byte(e.ok("inspect", name)), &out); err != nil || len(out) != 1 {
		e.t.Fatalf("inspect %s: %v", name, err)
	}
	return out[0]
}

// childOf returns the child process of pid (the launcher's QEMU), found
// through the kernel's process tree rather than by name: other QEMUs run
// on this machine.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			if fields := strings.Fields(string(b)); len(fields) > 0 {
				var child int
				fmt.Sscanf(fields[0], "%d", &child)
				return child
			}
		}
	}
	t.Fatalf("process %d has no child", pid)
	return 0
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// qmpCommand runs one QMP command on a socket and returns QEMU's answer
// line (the "return" or the "error").
func qmpCommand(t *testing.T, socket string, cmd map[string]any) string {
	t.Helper()
	c, err := net.DialTimeout("unix", socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	enc := json.NewEncoder(c)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		t.Fatal(err)
	}
	var answer string
	for _, req := range []map[string]any{{"execute": "qmp_capabilities"}, cmd} {
		if err := enc.Encode(req); err != nil {
			t.Fatal(err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(line), `"event"`) {
				answer = string(line)
				break
			}
		}
	}
	return answer
}

// rootOnlyFile writes a 0600 root file outside the home.
func rootOnlyFile(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "secret.raw")
	if err := os.WriteFile(p, []byte(strings.Repeat("root only\n", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHypervisorIsConfined checks, on the running QEMU of a box, that a
// root boxctl runs it as the box's own unprivileged user with QEMU's
// seccomp filter, no new privileges and no capabilities, and that it
// cannot open a root-only file even when asked to.
func TestHypervisorIsConfined(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the hypervisor gets a user of its own only when boxctl runs as root")
	}
	e := newEnv(t)
	e.ok("run", "-d", "--name", "conf", e.image)
	box := e.inspect("conf")
	if box.SandboxUID < 0x70000000 || box.Run == nil {
		t.Fatalf("inspect: sandbox_uid %d, run %+v", box.SandboxUID, box.Run)
	}
	qemu := childOf(t, box.Run.VM.PID)
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", qemu)); !strings.Contains(exe, "qemu-system") {
		t.Fatalf("the launcher's child %d is %s, not QEMU", qemu, exe)
	}
	st := procStatus(t, qemu)
	uid := fmt.Sprint(box.SandboxUID)
	if ids := strings.Fields(st["Uid"]); len(ids) != 4 || ids[0] != uid || ids[1] != uid || ids[2] != uid || ids[3] != uid {
		t.Errorf("QEMU's Uid: %q, want %s (inspect's sandbox_uid)", st["Uid"], uid)
	}
	if ids := strings.Fields(st["Gid"]); len(ids) != 4 || ids[0] != uid {
		t.Errorf("QEMU's Gid: %q, want %s", st["Gid"], uid)
	}
	for k, want := range map[string]string{"Seccomp": "2", "NoNewPrivs": "1", "CapEff": "0000000000000000", "CapPrm": "0000000000000000", "Groups": ""} {
		if st[k] != want {
			t.Errorf("QEMU's %s: %q, want %q", k, st[k], want)
		}
	}
	// The box works confined.
	if out := e.ok("exec", "conf", "--", "sh", "-c", "echo ok > /root/f && cat /root/f"); out != "ok\n" {
		t.Fatalf("exec: %q", out)
	}
	// Asked over QMP to open a root-only file, QEMU cannot.
	secret := rootOnlyFile(t)
	answer := qmpCommand(t, filepath.Join(e.home, "boxes", box.ID, "qmp.sock"),
		map[string]any{"execute": "blockdev-add", "arguments": map[string]any{"driver": "file", "node-name": "probe", "filename": secret, "read-only": true}})
	if !strings.Contains(answer, "Permission denied") {
		t.Errorf("blockdev-add of a root-only file: %s, want Permission denied", answer)
	}
	// A second box gets a user of its own.
	e.ok("create", "--name", "other", e.image)
	e.ok("start", "other")
	if other := e.inspect("other"); other.SandboxUID == box.SandboxUID || other.SandboxUID == 0 {
		t.Errorf("two boxes share sandbox user %d", other.SandboxUID)
	}
	e.ok("rm", "-f", "conf", "other")
}

// TestTamperedDiskChainIsRefused swaps a stopped box's writable qcow2 for
// one whose backing file is a root-only file outside the store, then for a
// symbolic link out of the store: the start is refused with an error that
// names the box, the file and the fix, and no VM runs.
func TestTamperedDiskChainIsRefused(t *testing.T) {
	e := newEnv(t)
	e.ok("create", "--name", "victim", e.image)
	e.ok("start", "victim")
	e.ok("stop", "victim")
	box := e.inspect("victim")
	disk := filepath.Join(e.home, "plugins-data", "qcow2", "disks", box.DiskID+".qcow2")
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("the box's disk: %v", err)
	}
	secret := rootOnlyFile(t)
	// The lowest-effort attack: the header names the secret.
	if err := os.Remove(disk); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", secret, "-F", "raw", disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	_, errs, code := e.run(nil, "start", "victim")
	if code == 0 {
		t.Fatalf("start with a disk backed by %s succeeded", secret)
	}
	for _, want := range []string{"victim", secret, "outside", "boxctl rm victim"} {
		if !strings.Contains(errs, want) {
			t.Errorf("the error lacks %q:\n%s", want, errs)
		}
	}
	if st := e.inspect("victim"); st.Status != "stopped" {
		t.Errorf("after the refused start the box is %s", st.Status)
	}
	if pids := openers(secret); len(pids) > 0 {
		t.Errorf("processes %v have %s open", pids, secret)
	}
	// A symbolic link out of the store.
	if err := os.Remove(disk); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, disk); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := e.run(nil, "start", "victim"); code == 0 || !strings.Contains(errs, "outside") || !strings.Contains(errs, secret) {
		t.Fatalf("start with a disk linked to %s: exit %d, %s", secret, code, errs)
	}
}

// openers lists the processes that have path open.
func openers(path string) []string {
	var pids []string
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && target == path {
			pids = append(pids, strings.Split(fd, "/")[2])
		}
	}
	return pids
}

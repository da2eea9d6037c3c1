package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// TestVolumeRules: the CLI's rules for named volumes, with the procvmm
// double as the VMM and the real storage plugin holding the volume disks.
func TestVolumeRules(t *testing.T) {
	e := newEnv(t, "")
	if got := strings.TrimSpace(e.ok("volume", "create", "--size", "128MiB", "data")); got != "data" {
		t.Fatalf("volume create printed %q", got)
	}
	if _, errs, code := e.cli("volume", "create", "data"); code == 0 || !strings.Contains(errs, "already exists") {
		t.Errorf("second volume create data: exit %d %s", code, errs)
	}
	if _, errs, code := e.cli("volume", "create", "--", "-bad"); code == 0 || !strings.Contains(errs, "invalid name") {
		t.Errorf("volume create -- -bad: exit %d %s", code, errs)
	}
	var vi core.VolumeInfo
	if err := json.Unmarshal([]byte(e.ok("volume", "inspect", "data")), &vi); err != nil || vi.Size != 128<<20 || vi.Path == "" || len(vi.UsedBy) != 0 {
		t.Fatalf("volume inspect data: %v %+v", err, vi)
	}
	if _, err := os.Stat(vi.Path); err != nil {
		t.Fatalf("the volume's disk file: %v", err)
	}

	e.ok("create", "--name", "a", "-v", "data:/data", testImage)
	e.ok("create", "--name", "b", "-v", "data:/srv/d", testImage)
	e.ok("create", "--name", "r1", "-v", "data:/data:ro", testImage)
	e.ok("create", "--name", "r2", "-v", "data:/data:ro", testImage)
	ls := e.ok("volume", "ls")
	if !strings.Contains(ls, "a,b,r1(ro),r2(ro)") {
		t.Errorf("volume ls does not list the users:\n%s", ls)
	}

	// Two read-only attachments run side by side; a writer is refused then.
	e.ok("start", "r1")
	e.ok("start", "r2")
	if _, errs, code := e.cli("start", "a"); code == 0 || !strings.Contains(errs, "attached to running box r") {
		t.Errorf("start a while r1 and r2 have the volume: exit %d %s", code, errs)
	}
	e.ok("stop", "r1")
	e.ok("stop", "r2")
	// One writer at a time.
	e.ok("start", "a")
	if _, errs, code := e.cli("start", "b"); code == 0 || !strings.Contains(errs, "volume data is attached to running box a") {
		t.Errorf("start b while a has the volume read-write: exit %d %s", code, errs)
	}
	if _, errs, code := e.cli("start", "r1"); code == 0 || !strings.Contains(errs, "running box a") {
		t.Errorf("start r1 (ro) while a has the volume read-write: exit %d %s", code, errs)
	}
	if b := inspectBox(e, "b"); b.Status.Active() {
		t.Errorf("b is %s after its refused start", b.Status)
	}

	// rm refused while used, -f says which boxes lose it.
	if _, errs, code := e.cli("volume", "rm", "data"); code == 0 || !strings.Contains(errs, "used by a, b, r1, r2") {
		t.Errorf("volume rm of a used volume: exit %d %s", code, errs)
	}
	e.ok("volume", "inspect", "data")
	_, errs, code := e.cli("volume", "rm", "-f", "data")
	if code != 0 || !strings.Contains(errs, "box a loses volume data at /data (running") || !strings.Contains(errs, "box b loses volume data at /srv/d (stopped)") {
		t.Errorf("volume rm -f: exit %d %s", code, errs)
	}
	if _, err := os.Stat(vi.Path); !os.IsNotExist(err) {
		t.Errorf("the volume's disk file is left after rm: %v", err)
	}
	if b := inspectBox(e, "b"); len(b.Config.Mounts) != 0 {
		t.Errorf("b still mounts %+v after volume rm -f", b.Config.Mounts)
	}
	if _, errs, code := e.cli("volume", "inspect", "data"); code == 0 || !strings.Contains(errs, "does not exist") {
		t.Errorf("inspect of a removed volume: exit %d %s", code, errs)
	}
	e.ok("stop", "a")
	e.ok("start", "b") // it lost the volume and starts without it
	e.ok("stop", "b")
}

// TestMountFlagErrors: bad -v arguments are refused with what is wrong,
// and no box is recorded.
func TestMountFlagErrors(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		arg, want string
	}{
		{dir + ":relative", "is not absolute"},
		{dir + ":/", "over the box's root"},
		{dir + "/missing:/m", "no such file or directory"},
		{file + ":/m", "is not a directory"},
		{"no/such:/m", "neither a host directory"},
		{"novol:/m", "volume novol does not exist"},
		{dir + ":/m:rx", "neither ro nor rw"},
		{dir, "want HOSTDIR:GUESTPATH"},
	}
	for _, c := range cases {
		_, errs, code := e.cli("create", "-v", c.arg, testImage)
		if code == 0 || !strings.Contains(errs, c.want) {
			t.Errorf("create -v %s: exit %d, stderr %q; want an error with %q", c.arg, code, errs, c.want)
		}
	}
	if _, errs, code := e.cli("create", "-v", dir+":/a", "-v", dir+":/a/", testImage); code == 0 || !strings.Contains(errs, "target of two mounts") {
		t.Errorf("two mounts on /a: exit %d %s", code, errs)
	}
	if out := e.ok("ls", "-a", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("refused creates left boxes: %q", out)
	}
	// A good host directory share is recorded as an absolute path.
	e.ok("create", "--name", "s", "-v", dir+":/mnt/share:ro", testImage)
	want := []model.Mount{{Kind: model.MountBind, Source: dir, Target: "/mnt/share", ReadOnly: true}}
	if got := inspectBox(e, "s").Config.Mounts; len(got) != 1 || got[0] != want[0] {
		t.Errorf("mounts %+v, want %+v", got, want)
	}
}

// inspectBox is boxctl inspect's record of one box.
func inspectBox(e *env, name string) model.Box {
	e.t.Helper()
	var list []model.Box
	if err := json.Unmarshal([]byte(e.ok("inspect", name)), &list); err != nil || len(list) != 1 {
		e.t.Fatalf("inspect %s: %v %d", name, err, len(list))
	}
	return list[0]
}

// TestMemorySnapshotsOfBoxesWithMountsAreRefused: checkpoint, suspend and
// fork need a memory image, which cannot hold a share's or a volume's
// contents; they refuse such a box and leave it running.
func TestMemorySnapshotsOfBoxesWithMountsAreRefused(t *testing.T) {
	e := newEnv(t, "")
	e.ok("volume", "create", "v")
	e.ok("run", "-d", "--name", "m", "-v", "v:/data", "-v", t.TempDir()+":/share:ro", testImage)
	for _, args := range [][]string{{"checkpoint", "m", "c1"}, {"suspend", "m"}, {"fork", "m", "--name", "f"}} {
		_, errs, code := e.cli(args...)
		if code == 0 || !strings.Contains(errs, "shares or volumes") {
			t.Errorf("%s: exit %d %s", strings.Join(args, " "), code, errs)
		}
	}
	if b := inspectBox(e, "m"); b.Status != model.StatusRunning {
		t.Errorf("m is %s after the refusals", b.Status)
	}
	if out := e.ok("ls", "-a", "-q"); len(strings.Fields(out)) != 1 {
		t.Errorf("the refused fork left boxes: %q", out)
	}
	e.ok("rm", "-f", "m")
}

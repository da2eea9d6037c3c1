package core

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCgroupDetectionOnThisHost runs the real detection against the
// host's mounts: a cgroup v1 or hybrid host (as the CI machine is) has no
// cgroup v2 at /sys/fs/cgroup, and a cgroup2 mount without controllers
// (the hybrid layout's /sys/fs/cgroup/unified) lacks memory and cpu.
func TestCgroupDetectionOnThisHost(t *testing.T) {
	cg := cgroupV2{root: cgroupMount, isCgroup2: isCgroup2}
	err := cg.usable()
	if isCgroup2(cgroupMount) {
		t.Logf("this host has cgroup v2 at %s: usable() = %v", cgroupMount, err)
	} else if err == nil || !strings.Contains(err.Error(), "not a cgroup v2 mount") {
		t.Errorf("%s is not cgroup2, but usable() = %v", cgroupMount, err)
	}
	unified := filepath.Join(cgroupMount, "unified")
	if !isCgroup2(unified) {
		return
	}
	ctrl, _ := os.ReadFile(filepath.Join(unified, "cgroup.controllers"))
	if strings.Contains(string(ctrl), "memory") {
		return
	}
	err = cgroupV2{root: unified, isCgroup2: isCgroup2}.usable()
	if err == nil || !strings.Contains(err.Error(), "memory controller is not available") {
		t.Errorf("%s has no memory controller, but usable() = %v", unified, err)
	}
	if dir, err := (cgroupV2{root: unified, isCgroup2: isCgroup2}).create("b1", 512, 1); err == nil {
		t.Errorf("create in %s made %s", unified, dir)
	}
}

// fakeCgroupRoot stands a temporary directory in for a cgroup v2 root
// with the given controllers; cgroupfs's own behaviour (control files
// appearing on mkdir) is not reproduced, only what the code writes.
func fakeCgroupRoot(t *testing.T, controllers string) cgroupV2 {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte(controllers+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return cgroupV2{root: root, isCgroup2: func(p string) bool { return p == root }}
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestCgroupCreateWritesLimits(t *testing.T) {
	cg := fakeCgroupRoot(t, "cpuset cpu io memory hugetlb pids")
	dir, err := cg.create("box1", 1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(cg.root, "boxctl", "box1"); dir != want {
		t.Fatalf("cgroup %s, want %s", dir, want)
	}
	for file, want := range map[string]string{
		filepath.Join(cg.root, "cgroup.subtree_control"):           "+memory +cpu",
		filepath.Join(cg.root, "boxctl", "cgroup.subtree_control"): "+memory +cpu",
		filepath.Join(dir, "memory.max"):                           "1610612736", // 1 GiB guest + 512 MiB
		filepath.Join(dir, "cpu.max"):                              "250000 100000",
	} {
		if got := readTrim(t, file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	// Again (the next start): the same directory, limits rewritten, and a
	// level that has the controllers already is left alone.
	if err := os.WriteFile(filepath.Join(cg.root, "cgroup.subtree_control"), []byte("cpu io memory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if dir2, err := cg.create("box1", 256, 1); err != nil || dir2 != dir {
		t.Fatalf("second create: %s %v", dir2, err)
	}
	if got := readTrim(t, filepath.Join(dir, "cpu.max")); got != "150000 100000" {
		t.Errorf("cpu.max for 1 vCPU: %q", got)
	}
	if got := readTrim(t, filepath.Join(dir, "memory.max")); got != "805306368" {
		t.Errorf("memory.max for 256 MiB: %q", got)
	}
	if got := readTrim(t, filepath.Join(cg.root, "cgroup.subtree_control")); got != "cpu io memory" {
		t.Errorf("root subtree_control rewritten: %q", got)
	}
}

func TestCgroupRefusedWithoutControllers(t *testing.T) {
	cg := fakeCgroupRoot(t, "cpuset io pids")
	_, err := cg.create("box1", 512, 1)
	if err == nil || !strings.Contains(err.Error(), "memory controller is not available") {
		t.Fatalf("create without the memory controller: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cg.root, "boxctl")); err == nil {
		t.Error("a refused create made directories")
	}
	notCgroup := cgroupV2{root: t.TempDir(), isCgroup2: isCgroup2}
	if _, err := notCgroup.create("box1", 512, 1); err == nil || !strings.Contains(err.Error(), "not a cgroup v2 mount") {
		t.Fatalf("create in a plain directory: %v", err)
	}
}

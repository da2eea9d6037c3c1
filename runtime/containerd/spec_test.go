package containerd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/boxctl/boxctl/core/model"
)

func TestBoxConfigFromOCISpec(t *testing.T) {
	dir := t.TempDir()
	hostnameFile := filepath.Join(dir, "hostname")
	if err := os.WriteFile(hostnameFile, []byte("pod-a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "app.conf")
	if err := os.WriteFile(cfgFile, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	mem, quota, period, pids := int64(300<<20), int64(150000), uint64(100000), int64(64)
	spec := &specs.Spec{
		Process: &specs.Process{
			Args: []string{"/app", "-v"}, Env: []string{"A=1"}, Cwd: "/srv",
			User: specs.User{UID: 1000, GID: 100},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/data", Type: "bind", Source: dir, Options: []string{"rbind", "ro"}},
			{Destination: "/etc/app.conf", Type: "bind", Source: cfgFile, Options: []string{"rbind"}},
			{Destination: "/etc/hostname", Type: "bind", Source: hostnameFile, Options: []string{"rbind"}},
			{Destination: "/scratch", Type: "tmpfs", Source: "tmpfs"},
		},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: &mem},
				CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
				Pids:   &specs.LinuxPids{Limit: &pids},
			},
			Sysctl: map[string]string{"net.ipv4.ip_forward": "1"},
		},
	}
	cfg, argv, files, unsupported, err := boxConfig(spec)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(argv, " ") != "/app -v" || cfg.WorkingDir != "/srv" || cfg.User != "1000:100" || cfg.Env[0] != "A=1" {
		t.Errorf("process: argv %q, config %+v", argv, cfg)
	}
	if cfg.MemoryMiB != 300 || cfg.CPUs != 2 {
		t.Errorf("VM size: %d MiB, %d CPUs; want 300 MiB and 2 (1.5 rounded up)", cfg.MemoryMiB, cfg.CPUs)
	}
	if cfg.Hostname != "pod-a" {
		t.Errorf("hostname from the /etc/hostname bind: %q", cfg.Hostname)
	}
	if len(cfg.Mounts) != 1 || cfg.Mounts[0] != (model.Mount{Kind: model.MountBind, Source: dir, Target: "/data", ReadOnly: true}) {
		t.Errorf("directory binds: %+v", cfg.Mounts)
	}
	if len(files) != 1 || files["/etc/app.conf"] != cfgFile {
		t.Errorf("file binds to copy: %v", files)
	}
	all := strings.Join(unsupported, "\n")
	for _, want := range []string{"linux.resources.pids", "linux.sysctl net.ipv4.ip_forward", "mount /scratch (tmpfs)", "/etc/app.conf", "mount /etc/hostname"} {
		if !strings.Contains(all, want) {
			t.Errorf("unsupported fields %q lack %q", all, want)
		}
	}
	if strings.Contains(all, "/proc") {
		t.Errorf("/proc is the guest's own, not unsupported: %q", all)
	}

	spec.Hostname = "bad_name!"
	if cfg, _, _, unsupported, _ := boxConfig(spec); cfg.Hostname != "" || !strings.Contains(strings.Join(unsupported, "\n"), "bad_name!") {
		t.Errorf("invalid hostname: got %q, reported %q", cfg.Hostname, unsupported)
	}
	if _, _, _, _, err := boxConfig(&specs.Spec{Process: &specs.Process{}}); err == nil {
		t.Error("a spec without args was accepted")
	}
}

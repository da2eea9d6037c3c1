package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDefaultsWithoutFile(t *testing.T) {
	t.Setenv("BOXCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("HOME", t.TempDir())
	if _, err := os.Stat("/etc/boxctl/config.hcl"); err == nil {
		t.Skip("/etc/boxctl/config.hcl exists on this machine")
	}
	cfg, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.File != "" || cfg.VMM != DefaultVMM || cfg.Storage != DefaultStorage || cfg.Images != DefaultImages ||
		cfg.Defaults.CPUs != DefaultCPUs || cfg.Defaults.MemoryMiB != DefaultMemoryMiB || !cfg.Registry.DockerCredentials ||
		cfg.Sandbox != (Sandbox{Enabled: true, UIDBase: DefaultSandboxUIDBase, Cgroups: true}) {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestLookupOrder(t *testing.T) {
	dir := t.TempDir()
	write := func(p, s string) string {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	xdg := write(filepath.Join(dir, "xdg", "boxctl", "config.hcl"), `vmm = "from-xdg"`)
	env := write(filepath.Join(dir, "env.hcl"), `vmm = "from-env"`)
	flag := write(filepath.Join(dir, "flag.hcl"), `vmm = "from-flag"`)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "xdg"))
	t.Setenv("BOXCTL_CONFIG", env)
	for _, c := range []struct{ explicit, want string }{{flag, "from-flag"}, {"", "from-env"}} {
		cfg, err := Load(c.explicit)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.VMM != c.want {
			t.Fatalf("explicit=%q: vmm %s, want %s", c.explicit, cfg.VMM, c.want)
		}
	}
	t.Setenv("BOXCTL_CONFIG", "")
	cfg, err := Load("")
	if err != nil || cfg.VMM != "from-xdg" || cfg.File != xdg {
		t.Fatalf("xdg: %v %+v", err, cfg)
	}
	t.Setenv("BOXCTL_CONFIG", filepath.Join(dir, "missing.hcl"))
	if _, err := Load(""); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "$BOXCTL_CONFIG") {
		t.Fatalf("missing $BOXCTL_CONFIG file: %v", err)
	}
}

func TestFullConfigDecodes(t *testing.T) {
	src := `
home      = "/var/lib/boxctl"
log_level = "DEBUG"
vmm       = "libkrun"

plugin "qemu" {
  path         = "/opt/boxctl-plugin-qemu"
  sha256       = "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB"
  call_timeout = "45s"
  config {
    accel = "tcg"
  }
}

defaults {
  cpus        = 2
  memory      = "1GiB"
  disk_size   = "20G"
  auto_remove = true
  detach      = true
  network     = "user"
  allow_net   = ["example.com:443", "10.1.0.0/16"]
}

sandbox {
  enabled  = false
  uid_base = 1000000000
  cgroups  = false
}

registry {
  insecure           = ["localhost:5000"]
  docker_credentials = false
  mirror "docker.io" {
    endpoints = ["https://mirror.example.com"]
  }
  credential "registry.example.com" {
    username = "me"
    password = "secret"
  }
}
`
	cfg, err := Parse([]byte(src), "full.hcl")
	if err != nil {
		t.Fatal(err)
	}
	q := cfg.Plugins["qemu"]
	if cfg.Home != "/var/lib/boxctl" || cfg.LogLevel != "debug" || cfg.VMM != "libkrun" || q.Path != "/opt/boxctl-plugin-qemu" ||
		q.SHA256 != strings.Repeat("ab", 32) || q.CallTimeout != 45*time.Second || strings.TrimSpace(string(q.ConfigBody)) != `accel = "tcg"` ||
		q.ConfigStart.Line != 10 {
		t.Fatalf("decoded %+v plugin %+v", cfg, q)
	}
	if d := cfg.Defaults; d.CPUs != 2 || d.MemoryMiB != 1024 || d.DiskSize != 20<<30 || !d.AutoRemove || !d.Detach ||
		d.Network != "user" || !slices.Equal(d.AllowNet, []string{"example.com:443", "10.1.0.0/16"}) {
		t.Fatalf("defaults %+v", d)
	}
	if sb := cfg.Sandbox; sb.Enabled || sb.UIDBase != 1000000000 || sb.Cgroups {
		t.Fatalf("sandbox %+v", sb)
	}
	r := cfg.Registry
	if len(r.Insecure) != 1 || r.DockerCredentials || len(r.Mirrors) != 1 || r.Mirrors[0].Endpoints[0] != "https://mirror.example.com" ||
		len(r.Credentials) != 1 || r.Credentials[0].Password != "secret" {
		t.Fatalf("registry %+v", r)
	}
	// The printed form loads back to the same settings, secrets masked.
	shown := string(cfg.Format())
	if strings.Contains(shown, "secret") {
		t.Fatal("config show prints a password")
	}
	again, err := Parse([]byte(shown), "shown.hcl")
	if err != nil {
		t.Fatalf("Format output does not parse: %v\n%s", err, shown)
	}
	if !reflect.DeepEqual(again.Defaults, cfg.Defaults) || again.Sandbox != cfg.Sandbox || again.VMM != cfg.VMM || string(again.Plugins["qemu"].ConfigBody) == "" {
		t.Fatalf("round trip changed the config:\n%s", shown)
	}
}

func TestDiagnosticsNameFileLineAndFix(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string
	}{
		{"malformed", "vmm = \"qemu\n", []string{"bad.hcl:1:12: error: Invalid multi-line string", "1 | vmm = \"qemu"}},
		{"unknown attribute", "defaults {\n  memroy = \"1G\"\n}\n", []string{"bad.hcl:2:3: error: Unsupported argument", "2 |   memroy", `Did you mean "memory"?`}},
		{"unknown block", "plugins {\n}\n", []string{"bad.hcl:1:1: error: Unsupported block type", `Did you mean "plugin"?`}},
		{"wrong type", "defaults {\n  cpus = \"many\"\n}\n", []string{"bad.hcl:2:", "a number is required"}},
		{"bad size", "defaults {\n  memory = \"lots\"\n}\n", []string{"bad.hcl:2:12: error: Invalid memory", "like 512MiB"}},
		{"bad level", "log_level = \"loud\"\n", []string{"bad.hcl:1:13: error: Invalid log_level", "use one of trace, debug"}},
		{"bad sha", "plugin \"qemu\" {\n  sha256 = \"xyz\"\n}\n", []string{"bad.hcl:2:12", "64 hex digits", "sha256sum"}},
		{"bad plugin name", "vmm = \"Q E M U\"\n", []string{"bad.hcl:1:7", "Invalid plugin name"}},
		{"duplicate plugin", "plugin \"a\" {}\nplugin \"a\" {}\n", []string{"bad.hcl:2:1", "Duplicate plugin block", "merge"}},
		{"bad timeout", "plugin \"a\" {\n  call_timeout = \"soon\"\n}\n", []string{"bad.hcl:2:18", "like \"30s\""}},
		{"bad uid_base", "sandbox {\n  uid_base = 1000\n}\n", []string{"bad.hcl:2:14: error: Invalid uid_base", "stay clear of real users", "1879048192"}},
		{"sandbox typo", "sandbox {\n  enable = false\n}\n", []string{"bad.hcl:2:3: error: Unsupported argument", `Did you mean "enabled"?`}},
		{"sandbox type", "sandbox {\n  cgroups = \"maybe\"\n}\n", []string{"bad.hcl:2:", "a bool is required"}},
		{"duplicate sandbox", "sandbox {}\nsandbox {}\n", []string{"bad.hcl:2:1", "Duplicate sandbox block"}},
		{"bad network", "defaults {\n  network = \"bridge\"\n}\n", []string{"bad.hcl:2:13: error: Invalid network", `use "user"`}},
		{"bad allow_net", "defaults {\n  allow_net = [\"10.1.2.3/16\"]\n}\n", []string{"bad.hcl:2:", "Invalid allow_net", "did you mean 10.1.0.0/16"}},
		{"allow_net without network", "defaults {\n  network = \"none\"\n  allow_net = [\"example.com\"]\n}\n", []string{"bad.hcl:3:", "Invalid allow_net", "Remove one of them"}},
		{"empty credential", "registry {\n  credential \"r.example\" {\n  }\n}\n", []string{"bad.hcl:2:3", "needs username and password, or token"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.src), "bad.hcl")
			if err == nil {
				t.Fatal("no error")
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not a *config.Error", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%s", w, err)
				}
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"512MiB": 512 << 20, "1G": 1 << 30, "10GiB": 10 << 30, "1.5GiB": 3 << 29, "4096": 4096, "2GB": 2e9, " 64 MiB ": 64 << 20} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1G", "1e9", "G"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	if s := FormatSize(512 << 20); s != "512MiB" {
		t.Errorf("FormatSize = %s", s)
	}
	if got, err := ParseSize("1PiB"); err != nil || got != 1<<50 {
		t.Errorf("ParseSize(1PiB) = %d, %v", got, err)
	}
	// Too large is said so, not "use a number with a unit".
	for _, in := range []string{"5EiB", "100000PiB", "1e30"} {
		_, err := ParseSize(in)
		if in != "1e30" && (err == nil || !strings.Contains(err.Error(), "too large")) {
			t.Errorf("ParseSize(%q) = %v, want too large", in, err)
		}
	}
}

func TestSizeLimits(t *testing.T) {
	for _, c := range []struct {
		n       uint64
		check   func(uint64) error
		wantErr string
	}{
		{0, CheckMemory, "at least 64MiB"},
		{100, CheckMemory, "at least 64MiB"},
		{64<<20 - 1, CheckMemory, "at least 64MiB"},
		{64 << 20, CheckMemory, ""},
		{1 << 40, CheckMemory, ""},
		{0, CheckDiskSize, "at least 64MiB"},
		{1 << 20, CheckDiskSize, "at least 64MiB"},
		{64 << 20, CheckDiskSize, ""},
		{16 << 40, CheckDiskSize, ""},
		{16<<40 + 1, CheckDiskSize, "too large"},
		{1 << 50, CheckDiskSize, "at most 16TiB"},
	} {
		err := c.check(c.n)
		if (c.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("check(%d) = %v, want %q", c.n, err, c.wantErr)
		}
	}
	// The config file applies the same limits.
	for src, want := range map[string]string{
		"defaults {\n  disk_size = \"1PiB\"\n}\n": "at most 16TiB",
		"defaults {\n  disk_size = \"1MiB\"\n}\n": "at least 64MiB",
		"defaults {\n  memory = \"100\"\n}\n":     "at least 64MiB",
	} {
		if _, err := Parse([]byte(src), "x.hcl"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
}

func TestCheckLogLevel(t *testing.T) {
	for _, l := range []string{"trace", "DEBUG", "info", "warn", "error", "off"} {
		if err := CheckLogLevel(l); err != nil {
			t.Errorf("CheckLogLevel(%q) = %v", l, err)
		}
	}
	if err := CheckLogLevel("bogus"); err == nil || !strings.Contains(err.Error(), "use one of trace, debug, info, warn, error, off") {
		t.Errorf("CheckLogLevel(bogus) = %v", err)
	}
}

package containerd

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// Mount types and destinations that every OCI spec carries for a Linux
// container: the guest's own kernel provides them, so they are not
// "unhonoured".
var guestProvided = map[string]bool{
	"/proc": true, "/dev": true, "/dev/pts": true, "/dev/shm": true, "/dev/mqueue": true,
	"/sys": true, "/sys/fs/cgroup": true, "/run": true,
}

// minMemoryMiB is the smallest VM the shim makes: the guest kernel and
// agent need about this much to boot.
const minMemoryMiB = 128

// Files the guest agent generates for every box (from the box's hostname,
// network and DNS) and mounts over the image's.
var boxOwned = map[string]bool{"/etc/hostname": true, "/etc/hosts": true, "/etc/resolv.conf": true}

// boxConfig maps an OCI spec to a box: args, env, cwd and user for the
// init process; memory and CPU limits size the VM; bind mounts of host
// directories become host directory shares. It also returns, for the
// shim's log, every field that is set but has no meaning for a box.
//
// Bind mounts of single host files are returned in files (container path
// -> host path): they are copied into the root disk (see writeLayout).
func boxConfig(spec *specs.Spec) (cfg model.BoxConfig, argv []string, files map[string]string, unsupported []string, err error) {
	p := spec.Process
	if p == nil || len(p.Args) == 0 {
		return cfg, nil, nil, nil, fmt.Errorf("the OCI spec has no process args: %w", errdefs.ErrInvalidArgument)
	}
	cfg.Env, cfg.WorkingDir, cfg.User = p.Env, p.Cwd, ociUser(p.User)
	if len(p.User.AdditionalGids) > 0 {
		unsupported = append(unsupported, "process.user.additionalGids")
	}
	if p.Rlimits != nil {
		unsupported = append(unsupported, "process.rlimits")
	}
	if p.ApparmorProfile != "" || p.SelinuxLabel != "" {
		unsupported = append(unsupported, "process apparmor/selinux labels (the VM boundary isolates the box)")
	}
	cfg.Hostname = spec.Hostname
	if l := spec.Linux; l != nil {
		if r := l.Resources; r != nil {
			if r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
				mib := uint64(*r.Memory.Limit) >> 20
				if mib < minMemoryMiB {
					unsupported = append(unsupported, fmt.Sprintf("linux.resources.memory.limit %d MiB: a box gets at least %d MiB", mib, minMemoryMiB))
					mib = minMemoryMiB
				}
				cfg.MemoryMiB = mib
			}
			if r.CPU != nil && r.CPU.Quota != nil && *r.CPU.Quota > 0 && r.CPU.Period != nil && *r.CPU.Period > 0 {
				n := int((uint64(*r.CPU.Quota) + *r.CPU.Period - 1) / *r.CPU.Period)
				cfg.CPUs = max(n, 1)
			} else if r.CPU != nil && r.CPU.Cpus != "" {
				unsupported = append(unsupported, "linux.resources.cpu.cpus (cpuset)")
			}
			if r.Pids != nil && r.Pids.Limit != nil && *r.Pids.Limit > 0 {
				unsupported = append(unsupported, "linux.resources.pids")
			}
			if len(r.Devices) > 0 && !defaultDeviceRules(r.Devices) {
				unsupported = append(unsupported, "linux.resources.devices")
			}
			if r.BlockIO != nil || len(r.HugepageLimits) > 0 || r.Network != nil {
				unsupported = append(unsupported, "linux.resources blockIO/hugepages/network")
			}
		}
		if len(l.Devices) > 0 {
			unsupported = append(unsupported, "linux.devices (host devices are not passed into a box)")
		}
		if l.Seccomp != nil {
			unsupported = append(unsupported, "linux.seccomp (the guest kernel is the box's own)")
		}
		if len(l.Sysctl) > 0 {
			keys := make([]string, 0, len(l.Sysctl))
			for k := range l.Sysctl {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			unsupported = append(unsupported, "linux.sysctl "+strings.Join(keys, ","))
		}
	}
	//lint:ignore SA1019 old runtimes still write prestart hooks; they are reported like the others
	if h := spec.Hooks; h != nil && (len(h.Prestart) > 0 || len(h.CreateRuntime) > 0 || len(h.CreateContainer) > 0 || len(h.StartContainer) > 0 || len(h.Poststart) > 0) {
		unsupported = append(unsupported, "hooks")
	}
	for _, m := range spec.Mounts {
		if guestProvided[m.Destination] {
			continue
		}
		if boxOwned[m.Destination] {
			// A pod's containers share the sandbox's UTS namespace: CRI
			// gives them its hostname only as this file.
			if m.Destination == "/etc/hostname" && cfg.Hostname == "" {
				if data, err := os.ReadFile(m.Source); err == nil {
					cfg.Hostname = strings.TrimSpace(string(data))
				}
			}
			unsupported = append(unsupported, fmt.Sprintf("mount %s: the box's own (from its hostname, network and DNS) is used", m.Destination))
			continue
		}
		if m.Type == "bind" || hasOption(m.Options, "bind") || hasOption(m.Options, "rbind") {
			if info, err := os.Stat(m.Source); err == nil && info.Mode().IsRegular() {
				if files == nil {
					files = map[string]string{}
				}
				files[m.Destination] = m.Source
				unsupported = append(unsupported, fmt.Sprintf("bind mount of file %s at %s: copied into the box at create, later changes are not seen", m.Source, m.Destination))
				continue
			}
			cfg.Mounts = append(cfg.Mounts, model.Mount{
				Kind: model.MountBind, Source: m.Source, Target: m.Destination, ReadOnly: hasOption(m.Options, "ro"),
			})
			continue
		}
		if m.Type == "tmpfs" || m.Type == "proc" || m.Type == "sysfs" || m.Type == "devpts" || m.Type == "mqueue" || m.Type == "cgroup" || m.Type == "cgroup2" {
			unsupported = append(unsupported, fmt.Sprintf("mount %s (%s): only host directory binds are mounted", m.Destination, m.Type))
			continue
		}
		unsupported = append(unsupported, fmt.Sprintf("mount %s (%s)", m.Destination, m.Type))
	}
	if cfg.Hostname != "" {
		if err := guestboot.ValidHostname(cfg.Hostname); err != nil {
			unsupported = append(unsupported, fmt.Sprintf("hostname %q (%v): the box's short ID is used", cfg.Hostname, err))
			cfg.Hostname = ""
		}
	}
	return cfg, p.Args, files, unsupported, nil
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

// defaultDeviceRules says whether device rules are the deny-all default
// containerd writes (nothing a box must enforce: it has no host devices).
func defaultDeviceRules(rules []specs.LinuxDeviceCgroup) bool {
	for _, r := range rules {
		if r.Allow {
			return false
		}
	}
	return true
}

package initramfs

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultModules are the modules the agent needs, by kernel module name. Whatever of them a
// kernel has built in is skipped; whatever it lacks entirely is reported, not fatal (another
// kernel may have them built in under a different configuration).
var DefaultModules = []string{
	"virtio_pci",                 // virtio devices on PCI (q35, pc)
	"virtio_mmio",                // virtio devices on MMIO (microvm)
	"virtio_blk",                 // vda (image root) and vdb (writable disk)
	"virtio_console",             // the virtio-serial agent port
	"virtio_net",                 // networking
	"vmw_vsock_virtio_transport", // the vsock agent transport (vhost-vsock, libkrun)
	"overlay",                    // the box root
	"ext4",                       // image and writable disks
	"crc32c_generic",             // ext4 metadata checksums
	"9p",                         // host directory shares (-v HOSTDIR:...), loaded only for a box that has one
	"9pnet_virtio",               // their virtio transport
	"virtiofs",                   // virtio-fs host directory shares (and fuse, its dependency), loaded likewise
}

// Module is a kernel module chosen for the initramfs.
type Module struct {
	// Name is the kernel's name for it ("virtio_pci").
	Name string
	// Path is where it goes under /lib/modules/<release>/, always uncompressed (".ko").
	Path string
	// Data is the uncompressed module.
	Data []byte
	// Deps are the names of the modules it depends on.
	Deps []string
}

// ModuleSelection is the result of ResolveModules.
type ModuleSelection struct {
	Modules []Module // sorted by name
	Builtin []string // wanted (or needed) modules the kernel has built in
	Missing []string // wanted modules neither built in nor present
}

// ModuleName normalises a module file or name ("crc32c-intel.ko.xz" -> "crc32c_intel").
func ModuleName(p string) string {
	base := filepath.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// ResolveModules finds the wanted modules and everything they depend on in dir (a
// /lib/modules/<release> tree; modules.dep is not needed: dependencies are read from each
// module's .modinfo section, so a freshly unpacked kernel package works).
func ResolveModules(dir string, want []string) (*ModuleSelection, error) {
	index := map[string]string{} // name -> path relative to dir
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.Contains(d.Name(), ".ko") && moduleSuffixOK(d.Name()) {
			rel, _ := filepath.Rel(dir, p)
			name := ModuleName(rel)
			if _, dup := index[name]; !dup {
				index[name] = rel
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan modules in %s: %w", dir, err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, line := range strings.Fields(string(b)) {
			builtin[ModuleName(line)] = true
		}
	}

	sel := &ModuleSelection{}
	seen := map[string]bool{}
	queue := make([]string, 0, len(want))
	for _, w := range want {
		queue = append(queue, ModuleName(w))
	}
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if seen[name] {
			continue
		}
		seen[name] = true
		rel, ok := index[name]
		switch {
		case builtin[name]:
			sel.Builtin = append(sel.Builtin, name)
			continue
		case !ok:
			sel.Missing = append(sel.Missing, name)
			continue
		}
		data, err := readModule(filepath.Join(dir, rel))
		if err != nil {
			return nil, err
		}
		deps, err := moduleDeps(data)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", rel, err)
		}
		sel.Modules = append(sel.Modules, Module{Name: name, Path: uncompressedPath(rel), Data: data, Deps: deps})
		queue = append(queue, deps...)
	}
	sort.Slice(sel.Modules, func(i, j int) bool { return sel.Modules[i].Name < sel.Modules[j].Name })
	sort.Strings(sel.Builtin)
	sort.Strings(sel.Missing)
	return sel, nil
}

func moduleSuffixOK(name string) bool {
	for _, s := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

func uncompressedPath(rel string) string {
	i := strings.Index(rel, ".ko")
	return rel[:i+3]
}

// readModule returns a module's uncompressed bytes (the agent then loads plain .ko files, so
// the guest kernel needs no module decompression support).
func readModule(path string) ([]byte, error) {
	switch {
	case strings.HasSuffix(path, ".ko"):
		return os.ReadFile(path)
	case strings.HasSuffix(path, ".gz"):
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(path, ".xz"):
		return runDecompressor(path, "xz", "-dc")
	case strings.HasSuffix(path, ".zst"):
		return runDecompressor(path, "zstd", "-dcq")
	}
	return nil, fmt.Errorf("%s: unknown module compression", path)
}

func runDecompressor(path, tool string, args ...string) ([]byte, error) {
	if _, err := exec.LookPath(tool); err != nil {
		return nil, fmt.Errorf("decompress %s: %s is not installed", path, tool)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(tool, append(args, path)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("decompress %s with %s: %v: %s", path, tool, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// moduleDeps reads the "depends=" entry of a module's .modinfo section.
func moduleDeps(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("parse ELF: %w", err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, ModuleName(d))
				}
			}
		}
	}
	return deps, nil
}

// ModulesDep renders modules.dep for a selection: one line per module with all of its
// transitive dependencies, as depmod writes it.
func ModulesDep(sel *ModuleSelection) []byte {
	byName := map[string]Module{}
	for _, m := range sel.Modules {
		byName[m.Name] = m
	}
	var b strings.Builder
	for _, m := range sel.Modules {
		var deps []string
		seen := map[string]bool{m.Name: true}
		var walk func(names []string)
		walk = func(names []string) {
			for _, n := range names {
				if seen[n] {
					continue
				}
				seen[n] = true
				if d, ok := byName[n]; ok {
					deps = append(deps, d.Path)
					walk(d.Deps)
				}
			}
		}
		walk(m.Deps)
		fmt.Fprintf(&b, "%s:", m.Path)
		for _, d := range deps {
			fmt.Fprintf(&b, " %s", d)
		}
		b.WriteString("\n")
	}
	return []byte(b.String())
}

const sigMagic = "~Module signature appended~\n"

// StripSignature removes a module's appended signature. The kernel then skips verifying it
// (an RSA check per module, slow under emulation) and loads it as unsigned, which taints the
// kernel but is allowed unless module.sig_enforce or lockdown is on. Unsigned input is
// returned as it is.
func StripSignature(ko []byte) ([]byte, error) {
	if !bytes.HasSuffix(ko, []byte(sigMagic)) {
		return ko, nil
	}
	end := len(ko) - len(sigMagic)
	// struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len (BE32).
	if end < 12 {
		return nil, fmt.Errorf("truncated module signature")
	}
	info := ko[end-12 : end]
	sigLen := int(info[8])<<24 | int(info[9])<<16 | int(info[10])<<8 | int(info[11])
	n := end - 12 - sigLen - int(info[3]) - int(info[4])
	if n <= 0 {
		return nil, fmt.Errorf("bad module signature length %d", sigLen)
	}
	return ko[:n], nil
}

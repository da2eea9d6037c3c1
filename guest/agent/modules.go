package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// moduleInitCompressedFile is MODULE_INIT_COMPRESSED_FILE for finit_module(2): the kernel
// decompresses .ko.xz/.ko.zst/.ko.gz itself (CONFIG_MODULE_DECOMPRESS).
const moduleInitCompressedFile = 4

// moduleSet is the content of a modules directory: modules.dep and modules.builtin.
type moduleSet struct {
	dir     string
	deps    map[string][]string // module path (relative to dir) -> dependency paths
	order   []string            // module paths in modules.dep order
	builtin map[string]bool     // module names built into the kernel
}

// moduleName turns "kernel/fs/overlayfs/overlay.ko.xz" into "overlay" (with '-' as '_', as
// the kernel names modules).
func moduleName(p string) string {
	base := filepath.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

func readModuleSet(dir string) (*moduleSet, error) {
	ms := &moduleSet{dir: dir, deps: map[string][]string{}, builtin: map[string]bool{}}
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		mod = strings.TrimSpace(mod)
		ms.order = append(ms.order, mod)
		ms.deps[mod] = strings.Fields(deps)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				ms.builtin[moduleName(line)] = true
			}
		}
	}
	return ms, nil
}

// vsockModules are the modules of the agent's vsock transport: a guest whose
// VMM connects over virtio-serial (boxctl.vsock_port=0) does not load them,
// some 35 ms of a TCG boot.
var vsockModules = map[string]bool{"vsock": true, "vmw_vsock_virtio_transport_common": true, "vmw_vsock_virtio_transport": true}

// ninePModules are the modules of virtio-9p host directory shares: the
// agent loads them only when the boot contract names a 9p share.
var ninePModules = map[string]bool{"9p": true, "9pnet": true, "9pnet_virtio": true, "netfs": true, "fscache": true}

// virtioFSModules are the modules of virtio-fs host directory shares,
// loaded only when the boot contract names virtio-fs shares.
var virtioFSModules = map[string]bool{"fuse": true, "virtiofs": true}

// loadOrder returns the modules of the set with every module after its dependencies,
// leaving out those skip names unless another module needs them.
func (ms *moduleSet) loadOrder(skip map[string]bool) ([]string, error) {
	var out []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(m string, chain []string) error
	visit = func(m string, chain []string) error {
		switch state[m] {
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, m), " -> "))
		case 2:
			return nil
		}
		state[m] = 1
		for _, d := range ms.deps[m] {
			if err := visit(d, append(chain, m)); err != nil {
				return err
			}
		}
		state[m] = 2
		if !ms.builtin[moduleName(m)] {
			out = append(out, m)
		}
		return nil
	}
	for _, m := range ms.order {
		if skip[moduleName(m)] {
			continue
		}
		if err := visit(m, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// loadModules loads every module listed in dir/modules.dep but those skip names (the
// initramfs carries only the modules the agent needs), dependencies first. A module that is already loaded is fine; a
// module that fails to load is reported but does not stop the others (the device it drives
// may be absent, and what is really needed is checked later).
func loadModules(dir string, skip map[string]bool, logf, debugf func(format string, args ...any)) error {
	ms, err := readModuleSet(dir)
	if err != nil {
		return err
	}
	order, err := ms.loadOrder(skip)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range order {
		began := time.Now()
		err := loadModule(filepath.Join(dir, m))
		debugf("module %s loaded in %s", moduleName(m), time.Since(began).Round(time.Microsecond))
		if err != nil {
			errs = append(errs, err)
			logf("load module %s: %v", moduleName(m), err)
		}
	}
	return errors.Join(errs...)
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		flags = moduleInitCompressedFile
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

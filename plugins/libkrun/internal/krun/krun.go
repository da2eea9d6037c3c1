// Package krun owns boxctl's bindings to libkrun's stable 1.x C ABI
// (libkrun.so.1; include/libkrun.h of release v1.19), loaded at run time
// with purego so that no binary needs cgo. It finds the library, checks by
// symbol that it offers every call boxctl needs (naming the missing symbol
// and the release that added it), refuses libkrun 2.x, and wraps each call
// in a typed Go method whose error names the call and the errno libkrun
// returned.
//
// Only the calls boxctl uses are bound; they are written from the header,
// not generated.
package krun

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"github.com/ebitengine/purego"
	"golang.org/x/sys/unix"
)

// ErrNotFound: no libkrun library could be loaded.
var ErrNotFound = errors.New("libkrun not found")

// ErrIncompatible: a library was loaded but it is not a usable libkrun 1.x.
var ErrIncompatible = errors.New("incompatible libkrun")

// Disk formats (KRUN_DISK_FORMAT_*).
const (
	DiskFormatRaw   uint32 = 0
	DiskFormatQcow2 uint32 = 1
)

// Kernel formats (KRUN_KERNEL_FORMAT_*).
const (
	KernelFormatRaw uint32 = 0
	KernelFormatELF uint32 = 1
)

// TSIHijackInet is KRUN_TSI_HIJACK_INET: the vsock device carries the
// guest's AF_INET sockets to the host (transparent socket impersonation).
const TSIHijackInet uint32 = 1 << 0

// Symbol is a libkrun entry point and the 1.x release that added it.
type Symbol struct {
	Name  string
	Since string
}

// Required are the calls every boxctl VM needs. Since is the first
// release whose header declares the call.
func Required() []Symbol {
	return []Symbol{
		{"krun_create_ctx", "1.0.0"},
		{"krun_free_ctx", "1.0.0"},
		{"krun_set_vm_config", "1.0.0"},
		{"krun_set_port_map", "1.0.0"},
		{"krun_start_enter", "1.0.0"},
		{"krun_set_console_output", "1.8.0"},
		{"krun_get_shutdown_eventfd", "1.8.0"},
		{"krun_add_disk2", "1.10.0"},
		{"krun_add_vsock_port2", "1.10.0"},
		{"krun_set_kernel", "1.11.0"},
	}
}

// Isolation are the calls a VM without a network needs: its vsock device
// must not carry the guest's sockets to the host (TSI), which the implicit
// one would.
func Isolation() []Symbol {
	return []Symbol{
		{"krun_disable_implicit_vsock", "1.17.0"},
		{"krun_add_vsock", "1.17.0"},
	}
}

// UserNetwork is the call that attaches a virtio-net device to a
// user-mode network over a stream socket (passt's framing, which
// sdk/usernet speaks). Without it a VM's network is TSI.
func UserNetwork() Symbol { return Symbol{"krun_add_net_unixstream", "1.15.0"} }

// Shares is the call that adds a virtio-fs device serving a host
// directory (libkrun's own server, in the VMM process).
func Shares() Symbol { return Symbol{"krun_add_virtiofs", "1.8.0"} }

// ReadOnlyShares is the call whose read_only flag makes libkrun's
// virtio-fs server refuse every write (EROFS) on the host side.
func ReadOnlyShares() Symbol { return Symbol{"krun_add_virtiofs3", "1.18.0"} }

// MinVersion is the oldest release with every Required symbol.
const MinVersion = "1.11.0"

// Lib is a loaded libkrun.
type Lib struct {
	path   string
	handle uintptr
	has    map[string]bool

	createCtx            func() int32
	freeCtx              func(uint32) int32
	setVMConfig          func(uint32, uint8, uint32) int32
	setPortMap           func(uint32, unsafe.Pointer) int32
	startEnter           func(uint32) int32
	setConsoleOutput     func(uint32, string) int32
	getShutdownEventfd   func(uint32) int32
	addDisk2             func(uint32, string, string, uint32, bool) int32
	addVsockPort2        func(uint32, uint32, string, bool) int32
	setKernel            func(uint32, string, uint32, string, string) int32
	disableImplicitVsock func(uint32) int32
	addVsock             func(uint32, uint32) int32
	addNetUnixstream     func(uint32, unsafe.Pointer, int32, unsafe.Pointer, uint32, uint32) int32
	addVirtiofs          func(uint32, string, string) int32
	addVirtiofs3         func(uint32, string, string, uint64, bool) int32
}

// Path is the file the library was loaded from (or the name dlopen
// searched for).
func (l *Lib) Path() string { return l.path }

// Has says whether the library exports sym.
func (l *Lib) Has(sym string) bool { return l.has[sym] }

// Candidates are where Open looks when no path is configured, in order:
// the soname through the dynamic loader's own search (LD_LIBRARY_PATH,
// ld.so.cache), then the directories distributions and Homebrew install
// to.
func Candidates() []string {
	if runtime.GOOS == "darwin" {
		return []string{"libkrun.1.dylib", "/opt/homebrew/lib/libkrun.1.dylib", "/usr/local/lib/libkrun.1.dylib"}
	}
	return []string{"libkrun.so.1", "/usr/lib64/libkrun.so.1", "/usr/local/lib64/libkrun.so.1", "/usr/local/lib/libkrun.so.1",
		"/usr/lib/x86_64-linux-gnu/libkrun.so.1", "/usr/lib/aarch64-linux-gnu/libkrun.so.1", "/usr/lib/libkrun.so.1"}
}

// InstallHint says what to install to get a usable libkrun.
const InstallHint = "install libkrun 1.x (" + MinVersion + " or newer) and libkrunfw: `dnf install libkrun` on Fedora/CentOS Stream, " +
	"`apt install libkrun1` where Debian/Ubuntu package it (else build it from https://github.com/containers/libkrun at a v1 tag), " +
	"`brew tap slp/krun && brew install libkrun` on macOS; or set library = \"/path/to/libkrun.so.1\" in plugin \"libkrun\" { config { ... } }"

// Open loads libkrun: path when it is set, else the first of Candidates
// that loads. The error lists every place it looked and why each failed.
func Open(path string) (*Lib, error) {
	tries := Candidates()
	if path != "" {
		tries = []string{path}
	}
	var looked, why []string
	for _, p := range tries {
		if isV2(p) {
			return nil, v2Error(p)
		}
		h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_LOCAL)
		if err != nil {
			looked = append(looked, p)
			// dlerror names the file; a file that is not there says no more.
			if msg := err.Error(); !strings.Contains(msg, "No such file") {
				why = append(why, msg)
			}
			continue
		}
		l, err := bind(p, h)
		if err != nil {
			_ = purego.Dlclose(h)
			return nil, err
		}
		return l, nil
	}
	if path == "" {
		// Say so when only a 2.x library is there.
		for _, p := range Candidates() {
			v2 := strings.Replace(strings.Replace(p, ".so.1", ".so.2", 1), ".1.dylib", ".2.dylib", 1)
			if h, err := purego.Dlopen(v2, purego.RTLD_LAZY|purego.RTLD_LOCAL); err == nil {
				_ = purego.Dlclose(h)
				return nil, v2Error(v2)
			}
		}
	}
	msg := "looked for " + strings.Join(looked, ", ")
	if len(why) > 0 {
		msg += " (" + strings.Join(why, "; ") + ")"
	}
	return nil, fmt.Errorf("%w: %s; %s", ErrNotFound, msg, InstallHint)
}

// isV2 says whether a library file's name is that of libkrun 2.x.
func isV2(p string) bool {
	b := filepath.Base(p)
	return strings.HasPrefix(b, "libkrun.so.2") || strings.HasPrefix(b, "libkrun.2.") || strings.HasPrefix(b, "libkrun.2")
}

func v2Error(p string) error {
	return fmt.Errorf("%w: %s is libkrun 2.x (the main branch's 2.0 development line), whose C API breaks 1.x; boxctl targets the stable 1.x ABI (libkrun.so.1, %s or newer): %s",
		ErrIncompatible, p, MinVersion, InstallHint)
}

// bind looks up every symbol boxctl uses, failing on a missing Required
// one, and registers the Go functions.
func bind(path string, h uintptr) (*Lib, error) {
	l := &Lib{path: path, handle: h, has: map[string]bool{}}
	all := append(append(Required(), Isolation()...), UserNetwork(), Shares(), ReadOnlyShares())
	for _, s := range all {
		if _, err := purego.Dlsym(h, s.Name); err == nil {
			l.has[s.Name] = true
		}
	}
	if !l.has["krun_create_ctx"] || !l.has["krun_start_enter"] {
		return nil, fmt.Errorf("%w: %s does not export krun_create_ctx and krun_start_enter: it is not libkrun; %s", ErrIncompatible, path, InstallHint)
	}
	for _, s := range Required() {
		if !l.has[s.Name] {
			return nil, fmt.Errorf("%w: %s lacks %s (added in libkrun %s); boxctl needs libkrun %s or newer: %s",
				ErrIncompatible, path, s.Name, s.Since, MinVersion, InstallHint)
		}
	}
	reg := func(fn any, name string) {
		if l.has[name] {
			purego.RegisterLibFunc(fn, h, name)
		}
	}
	reg(&l.createCtx, "krun_create_ctx")
	reg(&l.freeCtx, "krun_free_ctx")
	reg(&l.setVMConfig, "krun_set_vm_config")
	reg(&l.setPortMap, "krun_set_port_map")
	reg(&l.startEnter, "krun_start_enter")
	reg(&l.setConsoleOutput, "krun_set_console_output")
	reg(&l.getShutdownEventfd, "krun_get_shutdown_eventfd")
	reg(&l.addDisk2, "krun_add_disk2")
	reg(&l.addVsockPort2, "krun_add_vsock_port2")
	reg(&l.setKernel, "krun_set_kernel")
	reg(&l.disableImplicitVsock, "krun_disable_implicit_vsock")
	reg(&l.addVsock, "krun_add_vsock")
	reg(&l.addNetUnixstream, "krun_add_net_unixstream")
	reg(&l.addVirtiofs, "krun_add_virtiofs")
	reg(&l.addVirtiofs3, "krun_add_virtiofs3")
	return l, nil
}

// CheckSymbols fails, naming the first missing symbol and the release
// that added it, unless the library exports every one of syms.
func (l *Lib) CheckSymbols(why string, syms []Symbol) error {
	for _, s := range syms {
		if !l.has[s.Name] {
			return fmt.Errorf("%w: %s lacks %s (added in libkrun %s), which %s needs: install libkrun %s or newer",
				ErrIncompatible, l.path, s.Name, s.Since, why, s.Since)
		}
	}
	return nil
}

// CallError is a negative errno a libkrun call returned.
type CallError struct {
	Call  string
	Errno syscall.Errno
}

func (e *CallError) Error() string {
	name := unix.ErrnoName(e.Errno)
	if name == "" {
		name = fmt.Sprintf("errno %d", int(e.Errno))
	}
	return fmt.Sprintf("%s returned -%s (%v)", e.Call, name, e.Errno)
}

func (e *CallError) Unwrap() error { return e.Errno }

func check(call string, rc int32) error {
	if rc < 0 {
		return &CallError{Call: call, Errno: syscall.Errno(-rc)}
	}
	return nil
}

// Ctx is a libkrun configuration context.
type Ctx struct {
	lib *Lib
	id  uint32
}

// CreateCtx is krun_create_ctx.
func (l *Lib) CreateCtx() (*Ctx, error) {
	rc := l.createCtx()
	if err := check("krun_create_ctx", rc); err != nil {
		return nil, err
	}
	return &Ctx{lib: l, id: uint32(rc)}, nil
}

// Free is krun_free_ctx.
func (c *Ctx) Free() error { return check("krun_free_ctx", c.lib.freeCtx(c.id)) }

// SetVMConfig is krun_set_vm_config.
func (c *Ctx) SetVMConfig(vcpus uint8, ramMiB uint32) error {
	return check("krun_set_vm_config", c.lib.setVMConfig(c.id, vcpus, ramMiB))
}

// AddDisk2 is krun_add_disk2: the format is always given, never probed.
func (c *Ctx) AddDisk2(blockID, path string, format uint32, readOnly bool) error {
	return check("krun_add_disk2", c.lib.addDisk2(c.id, blockID, path, format, readOnly))
}

// SetKernel is krun_set_kernel.
func (c *Ctx) SetKernel(path string, format uint32, initramfs, cmdline string) error {
	return check("krun_set_kernel", c.lib.setKernel(c.id, path, format, initramfs, cmdline))
}

// AddVsockPort2 is krun_add_vsock_port2.
func (c *Ctx) AddVsockPort2(port uint32, path string, listen bool) error {
	return check("krun_add_vsock_port2", c.lib.addVsockPort2(c.id, port, path, listen))
}

// SetConsoleOutput is krun_set_console_output.
func (c *Ctx) SetConsoleOutput(path string) error {
	return check("krun_set_console_output", c.lib.setConsoleOutput(c.id, path))
}

// SetPortMap is krun_set_port_map with "host_port:guest_port" entries. An
// empty map is passed as an empty array (no port exposed), never as NULL
// (which would expose every listening guest port).
func (c *Ctx) SetPortMap(ports []string) error {
	bufs := make([][]byte, len(ports))
	arr := make([]*byte, len(ports)+1)
	for i, p := range ports {
		bufs[i] = append([]byte(p), 0)
		arr[i] = &bufs[i][0]
	}
	rc := c.lib.setPortMap(c.id, unsafe.Pointer(&arr[0]))
	runtime.KeepAlive(bufs)
	runtime.KeepAlive(arr)
	return check("krun_set_port_map", rc)
}

// DisableImplicitVsock is krun_disable_implicit_vsock (1.17).
func (c *Ctx) DisableImplicitVsock() error {
	if c.lib.disableImplicitVsock == nil {
		return c.lib.CheckSymbols("a VM without network", Isolation()[:1])
	}
	return check("krun_disable_implicit_vsock", c.lib.disableImplicitVsock(c.id))
}

// AddVsock is krun_add_vsock (1.17).
func (c *Ctx) AddVsock(tsiFeatures uint32) error {
	if c.lib.addVsock == nil {
		return c.lib.CheckSymbols("a VM without network", Isolation()[1:])
	}
	return check("krun_add_vsock", c.lib.addVsock(c.id, tsiFeatures))
}

// AddNetUnixstream is krun_add_net_unixstream with an open stream
// socket (the path argument NULL): a virtio-net device with MAC mac whose
// frames go over fd, each after its length as 4 big-endian bytes.
func (c *Ctx) AddNetUnixstream(fd int, mac [6]byte, features, flags uint32) error {
	if c.lib.addNetUnixstream == nil {
		return c.lib.CheckSymbols("a user-mode network", []Symbol{UserNetwork()})
	}
	rc := c.lib.addNetUnixstream(c.id, nil, int32(fd), unsafe.Pointer(&mac[0]), features, flags)
	runtime.KeepAlive(&mac)
	return check("krun_add_net_unixstream", rc)
}

// AddVirtiofs is krun_add_virtiofs: a virtio-fs device with tag serving
// the host directory path read-write.
func (c *Ctx) AddVirtiofs(tag, path string) error {
	if c.lib.addVirtiofs == nil {
		return c.lib.CheckSymbols("a host directory share", []Symbol{Shares()})
	}
	return check("krun_add_virtiofs", c.lib.addVirtiofs(c.id, tag, path))
}

// AddVirtiofsReadOnly is krun_add_virtiofs3 with read_only set and no DAX
// window (shm_size 0): libkrun's server refuses every write.
func (c *Ctx) AddVirtiofsReadOnly(tag, path string) error {
	if c.lib.addVirtiofs3 == nil {
		return c.lib.CheckSymbols("a read-only host directory share", []Symbol{ReadOnlyShares()})
	}
	return check("krun_add_virtiofs3", c.lib.addVirtiofs3(c.id, tag, path, 0, true))
}

// ShutdownEventFD is krun_get_shutdown_eventfd: a descriptor whose write
// asks the guest to shut down in order. Builds of libkrun without one
// (Linux ones other than libkrun-efi) return -EINVAL.
func (c *Ctx) ShutdownEventFD() (int, error) {
	rc := c.lib.getShutdownEventfd(c.id)
	if err := check("krun_get_shutdown_eventfd", rc); err != nil {
		return -1, err
	}
	return int(rc), nil
}

// StartEnter is krun_start_enter: it takes over the process and exits it
// when the guest ends, so it returns only a configuration error. Call it
// on a locked OS thread.
func (c *Ctx) StartEnter() error {
	rc := c.lib.startEnter(c.id)
	if err := check("krun_start_enter", rc); err != nil {
		return err
	}
	return fmt.Errorf("krun_start_enter returned %d without starting the VM", rc)
}

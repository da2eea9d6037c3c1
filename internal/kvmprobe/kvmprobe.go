// Package kvmprobe answers whether KVM can really run a guest on this host.
//
// A /dev/kvm that opens, or CPU flags, are not enough: under some
// paravirtual or nested setups /dev/kvm exists but guest code is emulated
// in software at a crawl. The probe creates a VM through /dev/kvm, runs a
// tiny guest in flat 32-bit protected mode (a counted loop, then an OUT to
// a port; protected rather than real mode because some hosts emulate real
// mode even with hardware virtualisation) and checks
// that it finishes within a time bound that real hardware meets with a wide
// margin.
//
// The core (choosing the VMM for vmm = "auto") and the VMM plugins (an
// accelerator of "auto") share it.
package kvmprobe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultDevice is the KVM device node.
const DefaultDevice = "/dev/kvm"

// DefaultBound is how long the guest loop may take. On hardware
// virtualisation the loop (LoopIterations iterations of dec/jnz, about a
// cycle each) takes about hardwareLoopTime; a paravirtual KVM without
// vmx/svm, measured on the development hosts, runs it at about 1 µs per
// iteration: 200 ms. The bound leaves a 100x margin for a loaded host with
// hardware virtualisation, and still fails the emulated one by 10x.
const DefaultBound = 20 * time.Millisecond

// LoopIterations is how many times the guest's loop runs.
const LoopIterations = 200000

// hardwareLoopTime is what the loop takes under hardware virtualisation
// (about 1 ns an iteration), the yardstick for how slow a KVM is.
const hardwareLoopTime = LoopIterations * time.Nanosecond

// Result is the probe's verdict.
type Result struct {
	// Usable says that KVM ran the guest within the bound.
	Usable bool
	// Reason says why: what failed, or how long the guest took.
	Reason string
	// Took is how long the probe took.
	Took time.Duration
}

type options struct {
	device string
	bound  time.Duration
}

// Option changes how Probe runs.
type Option func(*options)

// WithDevice probes dev instead of /dev/kvm.
func WithDevice(dev string) Option { return func(o *options) { o.device = dev } }

// WithBound sets how long the guest may run before KVM counts as too slow.
func WithBound(d time.Duration) Option { return func(o *options) { o.bound = d } }

// grace is how long Probe waits past the bound for KVM_RUN to come back
// after it was asked to stop, before giving up on it.
const grace = 2 * time.Second

// Probe runs the test guest and says whether KVM is usable. It never takes
// much longer than the bound: a KVM_RUN that does not return is
// interrupted, and one that ignores that is abandoned.
func Probe(ctx context.Context, opts ...Option) Result {
	o := options{device: DefaultDevice, bound: DefaultBound}
	for _, opt := range opts {
		opt(&o)
	}
	start := time.Now()
	done := make(chan Result, 1)
	go func() { done <- probe(ctx, o) }()
	select {
	case r := <-done:
		r.Took = time.Since(start)
		return r
	case <-time.After(o.bound + grace):
		return Result{Reason: fmt.Sprintf("KVM_RUN on %s did not return %v after it was asked to stop (emulated/nested KVM)", o.device, grace), Took: time.Since(start)}
	}
}

// ioctl numbers and structures from linux/kvm.h (x86).
const (
	kvmGetAPIVersion       = 0xAE00
	kvmCreateVM            = 0xAE01
	kvmGetVCPUMmapSize     = 0xAE04
	kvmCreateVCPU          = 0xAE41
	kvmSetUserMemoryRegion = 0x4020AE46
	kvmRun                 = 0xAE80
	kvmGetRegs             = 0x8090AE81
	kvmSetRegs             = 0x4090AE82
	kvmGetSregs            = 0x8138AE83
	kvmSetSregs            = 0x4138AE84

	kvmAPIVersion = 12

	exitIO           = 2
	exitHLT          = 5
	exitShutdown     = 8
	exitFailEntry    = 9
	exitIntr         = 10
	exitInternalErr  = 17
	kvmRunExitReason = 8  // offset of exit_reason in struct kvm_run
	kvmRunIOPort     = 34 // offset of io.port in struct kvm_run
)

type userspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

type regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

type segment struct {
	Base                         uint64
	Limit                        uint32
	Selector                     uint16
	Type, Present, DPL, DB, S, L uint8
	G, AVL, Unusable, padding    uint8
}

type dtable struct {
	Base    uint64
	Limit   uint16
	padding [3]uint16
}

type sregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT segment
	GDT, IDT                        dtable
	CR0, CR2, CR3, CR4, CR8         uint64
	EFER, APICBase                  uint64
	InterruptBitmap                 [4]uint64
}

// Compile-time checks that the structures match the kernel's sizes.
var (
	_ [32]byte  = [unsafe.Sizeof(userspaceMemoryRegion{})]byte{}
	_ [144]byte = [unsafe.Sizeof(regs{})]byte{}
	_ [312]byte = [unsafe.Sizeof(sregs{})]byte{}
)

const (
	guestAddr = 0x1000
	guestMem  = 0x10000
	probePort = 0xb0c
)

// guestCode is 32-bit code at guestAddr:
//
//	mov ecx, LoopIterations
//	l: dec ecx
//	jnz l
//	mov dx, probePort
//	out dx, al
//	hlt
func guestCode() []byte {
	n := uint32(LoopIterations)
	return []byte{
		0xb9, byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24),
		0x49,
		0x75, 0xfd,
		0x66, 0xba, byte(probePort & 0xff), byte(probePort >> 8),
		0xee,
		0xf4,
	}
}

// flatProtectedMode sets sr to 32-bit protected mode without paging, every
// segment covering all 4 GiB. KVM loads the segments from sregs as they
// are: no descriptor table is needed.
func flatProtectedMode(sr *sregs) {
	seg := segment{Base: 0, Limit: 0xffffffff, Present: 1, DB: 1, S: 1, G: 1}
	code, data := seg, seg
	code.Selector, code.Type = 0x08, 0xb // execute/read, accessed
	data.Selector, data.Type = 0x10, 0x3 // read/write, accessed
	sr.CS = code
	sr.DS, sr.ES, sr.FS, sr.GS, sr.SS = data, data, data, data, data
	sr.CR0 |= 1 // PE
}

func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

func fail(format string, a ...any) Result { return Result{Reason: fmt.Sprintf(format, a...)} }

func probe(ctx context.Context, o options) Result {
	// The vCPU belongs to the thread that runs it, and the watchdog signals
	// that thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	kvm, err := unix.Open(o.device, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return openFailure(o.device, err)
	}
	defer unix.Close(kvm)
	v, err := ioctl(kvm, kvmGetAPIVersion, 0)
	if err != nil {
		return fail("KVM_GET_API_VERSION on %s: %v: it is not a KVM device", o.device, err)
	}
	if v != kvmAPIVersion {
		return fail("%s speaks KVM API version %d, want %d", o.device, v, kvmAPIVersion)
	}
	vmfd, err := ioctl(kvm, kvmCreateVM, 0)
	if err != nil {
		return fail("KVM_CREATE_VM on %s: %v", o.device, err)
	}
	vm := int(vmfd)
	defer unix.Close(vm)

	mem, err := unix.Mmap(-1, 0, guestMem, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return fail("map guest memory: %v", err)
	}
	defer unix.Munmap(mem)
	copy(mem[guestAddr:], guestCode())
	region := userspaceMemoryRegion{MemorySize: guestMem, UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0])))}
	if _, err := ioctl(vm, kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region))); err != nil {
		return fail("KVM_SET_USER_MEMORY_REGION: %v", err)
	}
	cpufd, err := ioctl(vm, kvmCreateVCPU, 0)
	if err != nil {
		return fail("KVM_CREATE_VCPU: %v", err)
	}
	cpu := int(cpufd)
	defer unix.Close(cpu)
	size, err := ioctl(kvm, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return fail("KVM_GET_VCPU_MMAP_SIZE: %v", err)
	}
	run, err := unix.Mmap(cpu, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("map kvm_run: %v", err)
	}
	defer unix.Munmap(run)

	var sr sregs
	if _, err := ioctl(cpu, kvmGetSregs, uintptr(unsafe.Pointer(&sr))); err != nil {
		return fail("KVM_GET_SREGS: %v", err)
	}
	flatProtectedMode(&sr)
	if _, err := ioctl(cpu, kvmSetSregs, uintptr(unsafe.Pointer(&sr))); err != nil {
		return fail("KVM_SET_SREGS: %v", err)
	}
	// RCX starts at the count the guest loads, so a guest stopped before
	// its first instruction reads as no iterations done.
	r := regs{RIP: guestAddr, RFLAGS: 0x2, RCX: LoopIterations}
	if _, err := ioctl(cpu, kvmSetRegs, uintptr(unsafe.Pointer(&r))); err != nil {
		return fail("KVM_SET_REGS: %v", err)
	}

	start := time.Now()
	w := startWatchdog(ctx, run, o.bound)
	exit, err := runUntilExit(cpu, run, w)
	took := time.Since(start)
	w.stop()
	if w.expired() {
		if err := ctx.Err(); err != nil {
			return fail("probe of %s canceled: %v", o.device, err)
		}
		return tooSlow(cpu, o.bound)
	}
	if err != nil {
		return fail("KVM_RUN: %v", err)
	}
	switch exit {
	case exitIO:
		if port := *(*uint16)(unsafe.Pointer(&run[kvmRunIOPort])); port != probePort {
			return fail("the test guest exited on port %#x, want %#x", port, probePort)
		}
	case exitFailEntry, exitInternalErr, exitShutdown:
		return fail("KVM could not run the test guest (exit reason %d)", exit)
	default:
		return fail("the test guest stopped with exit reason %d, want an I/O exit", exit)
	}
	if _, err := ioctl(cpu, kvmGetRegs, uintptr(unsafe.Pointer(&r))); err != nil {
		return fail("KVM_GET_REGS: %v", err)
	}
	if uint32(r.RCX) != 0 {
		return fail("the test guest's loop did not finish (ecx = %d)", uint32(r.RCX))
	}
	slow := took * 1000 / o.bound // thousandths of the bound
	return Result{Usable: true, Reason: fmt.Sprintf("KVM ran the test guest in %v (%d.%d%% of the %v bound)", took.Round(time.Microsecond), slow/10, slow%10, o.bound)}
}

// tooSlow describes a guest that did not finish in the bound, with how
// much slower than hardware virtualisation it ran, from how far its loop got.
func tooSlow(cpu int, bound time.Duration) Result {
	var r regs
	done := uint64(0)
	if _, err := ioctl(cpu, kvmGetRegs, uintptr(unsafe.Pointer(&r))); err == nil {
		done = LoopIterations - uint64(uint32(r.RCX))
	}
	if done == 0 || done >= LoopIterations {
		return fail("KVM runs guest code too slowly (emulated/nested KVM): the test guest did not get through its loop in %v, where hardware virtualisation takes about %v", bound, hardwareLoopTime)
	}
	projected := time.Duration(uint64(bound) * LoopIterations / done)
	return fail("KVM runs guest code %d× too slowly (emulated/nested KVM): the test guest ran %d of %d loop iterations in %v, where hardware virtualisation runs them all in about %v",
		projected/hardwareLoopTime, done, LoopIterations, bound, hardwareLoopTime)
}

// runUntilExit runs the vCPU until it exits for a reason other than a
// signal (the Go runtime preempts threads with signals too), or the
// watchdog has fired.
func runUntilExit(cpu int, run []byte, w *watchdog) (uint32, error) {
	for {
		_, err := ioctl(cpu, kvmRun, 0)
		if w.expired() {
			return 0, nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		exit := *(*uint32)(unsafe.Pointer(&run[kvmRunExitReason]))
		if exit == exitIntr {
			continue
		}
		return exit, nil
	}
}

// watchdog stops KVM_RUN at the bound or when ctx ends: it sets
// kvm_run.immediate_exit (so a KVM_RUN about to start returns at once) and
// signals the vCPU thread (so a running one returns EINTR), repeating the
// signal until the run loop notices.
type watchdog struct {
	fired atomic.Bool
	quit  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func startWatchdog(ctx context.Context, run []byte, bound time.Duration) *watchdog {
	w := &watchdog{quit: make(chan struct{})}
	pid, tid := unix.Getpid(), unix.Gettid()
	// request_interrupt_window and immediate_exit are the first two bytes
	// of kvm_run, followed by padding: one aligned 32-bit store sets
	// immediate_exit without a torn write.
	head := (*uint32)(unsafe.Pointer(&run[0]))
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		t := time.NewTimer(bound)
		defer t.Stop()
		select {
		case <-w.quit:
			return
		case <-ctx.Done():
		case <-t.C:
		}
		w.fired.Store(true)
		atomic.StoreUint32(head, 1<<8)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			_ = unix.Tgkill(pid, tid, unix.SIGURG)
			select {
			case <-w.quit:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *watchdog) expired() bool { return w.fired.Load() }

// stop ends the watchdog and waits for it, so that no signal reaches the
// thread once it is unlocked.
func (w *watchdog) stop() {
	w.once.Do(func() { close(w.quit) })
	w.wg.Wait()
}

func openFailure(dev string, err error) Result {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fail("open %s: %v: the kvm module is not loaded or this is a VM without nested virtualisation", dev, err)
	case errors.Is(err, os.ErrPermission):
		return fail("open %s: %v: add your user to the kvm group (and log in again)", dev, err)
	}
	return fail("open %s: %v", dev, err)
}

// Once runs a probe at most once and keeps its answer: the host does not
// change under a process, and a probe that fails costs its whole bound. A
// VMM plugin keeps one for its process's life.
type Once struct {
	probe func(context.Context) Result
	once  sync.Once
	r     Result
}

// NewOnce returns a Once over probe (nil: Probe with the defaults).
func NewOnce(probe func(context.Context) Result) *Once {
	if probe == nil {
		probe = func(ctx context.Context) Result { return Probe(ctx) }
	}
	return &Once{probe: probe}
}

// Result is the probe's answer, probing on the first call. The probe is
// not cut short by ctx ending: later callers share the answer.
func (o *Once) Result(ctx context.Context) Result {
	o.once.Do(func() { o.r = o.probe(context.WithoutCancel(ctx)) })
	return o.r
}

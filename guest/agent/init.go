package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/boxctl/boxctl/sdk/guestboot"
)

// Paths inside the guest's initramfs.
const (
	runDir       = "/run/boxctl"
	imageMount   = runDir + "/image" // the image's read-only root (vda)
	dataMount    = runDir + "/data"  // the box's writable disk (vdb)
	boxRoot      = runDir + "/root"  // the overlay commands run in
	generatedEtc = runDir + "/etc"   // hostname, hosts, resolv.conf bind-mounted into the box
)

// BootConfig is what the agent reads from the kernel command line: the
// guest boot contract of package sdk/guestboot.
type BootConfig = guestboot.Config

// ParseCmdline reads the boxctl.* parameters of a kernel command line; unknown ones are
// returned as warnings, not errors, so an older agent boots with a newer host.
func ParseCmdline(cmdline string) (BootConfig, []string) { return guestboot.Parse(cmdline) }

func devPath(dev string) string {
	if strings.HasPrefix(dev, "/") {
		return dev
	}
	return "/dev/" + dev
}

// Main runs the agent as PID 1 (/init) of a box VM. It never returns: on a fatal error it
// prints the error on the console and powers the VM off (PID 1 exiting would panic the
// kernel).
func Main(version string) {
	began := time.Now()
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "boxctl-agent: this is the init of a boxctl VM and must run as PID 1; it is not meant to be started by hand")
		os.Exit(2)
	}
	p := &pid1{}
	defer func() {
		if r := recover(); r != nil {
			p.fatal(fmt.Errorf("panic: %v", r))
		}
	}()
	if err := p.earlyMounts(); err != nil {
		p.fatal(err)
	}
	p.attachConsole()
	cmdline, _ := os.ReadFile("/proc/cmdline")
	cfg, warnings := ParseCmdline(string(cmdline))
	p.boot = cfg
	p.log = newConsoleLogger(p.console, cfg.Debug)
	for _, w := range warnings {
		p.log.Warn(w)
	}
	// Before anything can fork: from here on every child is reaped by the Reaper.
	reaper := NewReaper(true)

	var uts unix.Utsname
	_ = unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	modStart := time.Now()
	var boot unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot)
	p.log.Debug("agent started", "since_kernel_start", time.Duration(boot.Nano()).Round(time.Millisecond), "runtime_start", time.Since(began).Round(time.Microsecond))
	warnf := func(f string, a ...any) { p.log.Warn(fmt.Sprintf(f, a...)) }
	debugf := func(f string, a ...any) { p.log.Debug(fmt.Sprintf(f, a...)) }
	skip := map[string]bool{}
	if cfg.VsockPort == 0 {
		for m := range vsockModules {
			skip[m] = true
		}
	}
	if !cfg.Has9p() {
		for m := range ninePModules {
			skip[m] = true
		}
	}
	if !cfg.HasVirtioFS() {
		for m := range virtioFSModules {
			skip[m] = true
		}
	}
	if err := loadModules(filepath.Join("/lib/modules", release), skip, warnf, debugf); err != nil && errors.Is(err, os.ErrNotExist) {
		p.log.Warn("no kernel modules in the initramfs", "release", release)
	}
	p.log.Debug("modules loaded", "took", time.Since(modStart))
	step := stepTimer(p.log, time.Now())

	if err := setupLoopback(); err != nil {
		p.log.Warn("loopback", "err", err)
	}
	step("loopback")
	if cfg.Addr.IsValid() {
		if dev, err := setupNetwork(cfg.Addr, cfg.Gateway, 3*time.Second); err != nil {
			p.log.Warn("network", "err", err)
		} else {
			p.log.Debug("network up", "dev", dev, "addr", cfg.Addr, "gw", cfg.Gateway)
		}
	}
	step("network")
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		p.log.Warn("sethostname", "err", err)
	}

	rootErr := p.mountBoxRoot(cfg)
	if rootErr != nil {
		p.log.Error("box root not mounted: " + rootErr.Error())
	}
	step("box root")
	state := RootState{Mounted: rootErr == nil, Err: rootErr}

	ag := New(Config{
		Root:          boxRoot,
		RootState:     func() RootState { return state },
		WritableMount: p.writable,
		UpperDir:      p.upper,
		Generated:     p.generated,
		Version:       version,
		Logger:        p.log,
		Reaper:        reaper,
		Shutdown:      p.shutdown,
		BoxID:         cfg.BoxID,
		Reidentify:    p.reidentify,
	})
	srv := grpc.NewServer()
	ag.Register(srv)

	ctx := context.Background()
	transports := 0
	if _, err := os.Stat("/dev/vsock"); err == nil && cfg.VsockPort != 0 {
		l, err := vsock.Listen(cfg.VsockPort, nil)
		if err != nil {
			p.log.Warn("vsock listen", "port", cfg.VsockPort, "err", err)
		} else {
			transports++
			go func() {
				if err := srv.Serve(l); err != nil {
					p.log.Error("vsock serve", "err", err)
				}
			}()
		}
	}
	if cfg.SerialPort != "none" {
		dev, err := waitVirtioPort(cfg.SerialPort, 5*time.Second)
		if err != nil {
			p.log.Warn("serial transport", "err", err)
		} else {
			transports++
			_ = os.MkdirAll("/dev/virtio-ports", 0o755)
			_ = os.Symlink("../"+filepath.Base(dev), "/dev/virtio-ports/"+cfg.SerialPort)
			go ServeSerial(ctx, srv, OpenDevice(dev), p.log)
		}
	}
	if transports == 0 {
		p.fatal(errNoTransport)
	}
	step("agent transports")
	p.log.Info(fmt.Sprintf("boxctl-agent %s ready in %s (kernel %s, root mounted: %v)",
		version, time.Since(began).Round(time.Millisecond), release, state.Mounted))
	select {}
}

// stepTimer returns a function that logs, at debug level, how long the boot
// step just finished took: `boxctl.debug=1` on the kernel command line shows
// where a boot's time goes (bench/coldboot).
func stepTimer(log *slog.Logger, start time.Time) func(step string) {
	last := start
	return func(step string) {
		now := time.Now()
		log.Debug("boot step", "step", step, "took", now.Sub(last).Round(time.Microsecond))
		last = now
	}
}

// pid1 holds what the PID 1 duties need.
type pid1 struct {
	boot      BootConfig // the kernel command line's, for Reidentify to re-apply
	console   *os.File
	log       *slog.Logger
	writable  string   // mount point of the writable filesystem, for Quiesce
	upper     string   // the overlay's upper directory, for Diff
	generated []string // box-root paths the agent mounts its own files onto

	shutdownOnce sync.Once
}

func (p *pid1) earlyMounts() error {
	mounts := []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.dst, err)
		}
		err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			// The kernel may have mounted devtmpfs already (CONFIG_DEVTMPFS_MOUNT).
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	return nil
}

// attachConsole makes /dev/console the agent's stdio (the kernel only does this when the
// initramfs has a /dev/console node).
func (p *pid1) attachConsole() {
	f, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		p.console = os.Stderr
		return
	}
	for fd := 0; fd <= 2; fd++ {
		_ = unix.Dup3(int(f.Fd()), fd, 0)
	}
	p.console = f
}

func newConsoleLogger(w io.Writer, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey:
				return slog.Attr{}
			case slog.LevelKey:
				return slog.String("boxctl-agent", strings.ToLower(a.Value.String()))
			}
			return a
		},
	}))
}

// fatal prints err where a human will look (the VM's console) and powers off.
func (p *pid1) fatal(err error) {
	w := io.Writer(os.Stderr)
	if p.console != nil {
		w = p.console
	}
	fmt.Fprintf(w, "\nboxctl-agent: FATAL: %v\nboxctl-agent: powering off\n", err)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func waitVirtioPort(name string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		dev, err := findVirtioPort("/sys", name)
		if err == nil {
			// The sysfs entry can precede the device node by a moment.
			if _, err := os.Stat(dev); err == nil {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("%s did not appear", dev)
			}
			return "", err
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func waitDevice(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("device %s did not appear within %s: %w", path, timeout, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// mountBoxRoot mounts the image read-only, the writable disk, and the overlay of both with
// what a box needs inside it.
func (p *pid1) mountBoxRoot(cfg BootConfig) error {
	for _, d := range []string{imageMount, dataMount, boxRoot, generatedEtc} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if cfg.RootDev == "" || cfg.RootDev == "none" {
		return errors.New("no root disk (boxctl.root=none)")
	}
	rootDev := devPath(cfg.RootDev)
	if err := waitDevice(rootDev, 10*time.Second); err != nil {
		return fmt.Errorf("image root disk: %w", err)
	}
	if err := mountReadOnly(rootDev, imageMount, cfg.RootFSType); err != nil {
		return fmt.Errorf("mount image root %s: %w", rootDev, err)
	}

	if cfg.DataDev == "none" {
		if err := unix.Mount("tmpfs", dataMount, "tmpfs", unix.MS_NOSUID, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs writable layer: %w", err)
		}
	} else {
		dataDev := devPath(cfg.DataDev)
		if err := waitDevice(dataDev, 10*time.Second); err != nil {
			return fmt.Errorf("writable disk: %w", err)
		}
		if err := unix.Mount(dataDev, dataMount, cfg.DataFSType, unix.MS_NOATIME, ""); err != nil {
			return fmt.Errorf("mount writable disk %s (%s): %w", dataDev, cfg.DataFSType, err)
		}
		p.writable = dataMount
	}
	upper, work := dataMount+"/upper", dataMount+"/work"
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("prepare writable disk: %w", err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", imageMount, upper, work)
	if err := unix.Mount("overlay", boxRoot, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay: %w", err)
	}
	p.upper = upper
	if err := p.populateBoxRoot(cfg); err != nil {
		return err
	}
	return mountShares(cfg.Mounts, cfg.ShareFS)
}

// mountShares mounts the box's host directory shares and volumes at their
// targets inside the box root, creating missing target directories there
// (resolved inside the root, like populateBoxRoot's). A mount that fails
// fails the box root: a box must not run with its data silently missing.
func mountShares(mounts []guestboot.Mount, shareFS string) error {
	for _, m := range mounts {
		if err := mkdirAllInRoot(boxRoot, m.Target); err != nil {
			return fmt.Errorf("mount point %s: %w", m.Target, err)
		}
		var flags uintptr = unix.MS_NOSUID | unix.MS_NODEV
		if m.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		switch m.Kind {
		case guestboot.MountShare:
			if shareFS == guestboot.ShareFSVirtioFS {
				err := mountInRoot(m.Source, m.Target, "virtiofs", flags, "")
				if errors.Is(err, unix.ENODEV) {
					return fmt.Errorf("host directory share %s: this guest kernel has no virtio-fs filesystem (CONFIG_VIRTIO_FS): use a kernel with it, or plugin \"qemu\" share_transport = \"9p\" with a kernel that has 9p; see docs/volumes.md: %w", m.Target, err)
				}
				if err != nil {
					return fmt.Errorf("host directory share %s (virtio-fs %s): %w", m.Target, m.Source, err)
				}
				continue
			}
			// msize: 9p's default of 8 KiB makes every read and write a round trip of 8 KiB.
			err := mountInRoot(m.Source, m.Target, "9p", flags, "trans=virtio,version=9p2000.L,msize=524288,cache=none")
			if errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("host directory share %s: this guest kernel has no 9p filesystem (Debian's cloud kernel has none: share over virtio-fs instead (plugin \"qemu\" share_transport = \"virtio-fs\", with virtiofsd installed), or `make guest-generic` builds a guest on the generic kernel, then set BOXCTL_GUEST_DIR=build/guest-generic or the plugin's kernel and initrd; see docs/volumes.md): %w", m.Target, err)
			}
			if err != nil {
				return fmt.Errorf("host directory share %s: %w", m.Target, err)
			}
		case guestboot.MountDisk:
			dev := devPath(m.Source)
			if err := waitDevice(dev, 10*time.Second); err != nil {
				return fmt.Errorf("volume at %s: %w", m.Target, err)
			}
			err := mountInRoot(dev, m.Target, guestboot.FSType, flags|unix.MS_NOATIME, "")
			if err != nil && m.ReadOnly {
				// A journal left to replay cannot be replayed read-only.
				err = mountInRoot(dev, m.Target, guestboot.FSType, flags|unix.MS_NOATIME, "noload")
			}
			if err != nil {
				return fmt.Errorf("volume at %s (%s): %w", m.Target, dev, err)
			}
		}
	}
	return nil
}

// mkdirAllInRoot makes directory p and its parents inside root, each step
// resolved inside root.
func mkdirAllInRoot(root, p string) error {
	cur := "/"
	for _, part := range strings.Split(strings.Trim(filepath.Clean(p), "/"), "/") {
		cur = filepath.Join(cur, part)
		if err := mkdirInRoot(root, cur, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func mountReadOnly(dev, dst, fstype string) error {
	err := unix.Mount(dev, dst, fstype, unix.MS_RDONLY, "")
	if err != nil && fstype == "ext4" {
		// A journal that needs replay cannot be replayed on a read-only disk; the image is
		// never mounted writable, so its journal is skipped.
		if err2 := unix.Mount(dev, dst, fstype, unix.MS_RDONLY, "noload"); err2 == nil {
			return nil
		}
	}
	return err
}

// populateBoxRoot mounts the pseudo filesystems and the generated /etc files into the box
// root. Every target is resolved inside the box root and mounted through its descriptor, so
// a symlink in the image (say /proc -> /) cannot redirect a mount into the agent's own tree.
func (p *pid1) populateBoxRoot(cfg BootConfig) error {
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{"/proc", 0o555}, {"/sys", 0o555}, {"/dev", 0o755}, {"/tmp", 0o777 | os.ModeSticky}, {"/etc", 0o755}} {
		if err := mkdirInRoot(boxRoot, d.path, d.mode); err != nil {
			return err
		}
	}
	if err := mountInRoot("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := mountInRoot("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := mountInRoot("/dev", "/dev", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}

	files := generatedFiles(cfg.Hostname, cfg.DNS)
	for _, name := range []string{"hostname", "hosts", "resolv.conf"} {
		content, ok := files[name]
		if !ok {
			continue
		}
		src := filepath.Join(generatedEtc, name)
		if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
			return err
		}
		if err := touchInRoot(boxRoot, "/etc/"+name); err != nil {
			return err
		}
		if err := mountInRoot(src, "/etc/"+name, "", unix.MS_BIND, ""); err != nil {
			return err
		}
		p.generated = append(p.generated, "/etc/"+name)
	}
	return nil
}

func mkdirInRoot(root, p string, mode os.FileMode) error {
	if _, err := statInRoot(root, p); err == nil {
		return nil
	}
	parent, err := openInRoot(root, filepath.Dir(p), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("box root %s: %w", p, err)
	}
	defer parent.Close()
	err = unix.Mkdirat(int(parent.Fd()), filepath.Base(p), uint32(mode.Perm()))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("box root: mkdir %s: %w", p, err)
	}
	if mode&os.ModeSticky != 0 {
		d, err := openInRoot(root, p, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer d.Close()
		return d.Chmod(mode)
	}
	return nil
}

// touchInRoot makes sure a regular file exists at p (a bind mount needs a target). A
// dangling symlink there is replaced by an empty file.
func touchInRoot(root, p string) error {
	if fi, err := statInRoot(root, p); err == nil && !fi.IsDir() {
		return nil
	}
	parent, err := openInRoot(root, filepath.Dir(p), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("box root %s: %w", p, err)
	}
	defer parent.Close()
	_ = unix.Unlinkat(int(parent.Fd()), filepath.Base(p), 0)
	fd, err := unix.Openat(int(parent.Fd()), filepath.Base(p), unix.O_CREAT|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("box root: create %s: %w", p, err)
	}
	return unix.Close(fd)
}

// mountInRoot mounts onto target (a path inside the box root) through a descriptor of the
// resolved target.
func mountInRoot(src, target, fstype string, flags uintptr, data string) error {
	f, err := openInRoot(boxRoot, target, unix.O_PATH)
	if err != nil {
		return fmt.Errorf("box root: %s: %w", target, err)
	}
	defer f.Close()
	if err := unix.Mount(src, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), fstype, flags, data); err != nil {
		return fmt.Errorf("box root: mount %s on %s: %w", src, target, err)
	}
	return nil
}

// setupLoopback brings lo up; the kernel assigns 127.0.0.1 and ::1 itself.
func setupLoopback() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// shutdown stops every process, flushes and unmounts the box's filesystems, and returns the
// power-off to run once the reply is on its way.
func (p *pid1) shutdown(ctx context.Context, grace time.Duration) (func(), error) {
	unix.Sync()
	_ = unix.Kill(-1, unix.SIGTERM)
	if !waitNoProcesses(grace) {
		_ = unix.Kill(-1, unix.SIGKILL)
		waitNoProcesses(2 * time.Second)
	}
	var errs []error
	for _, mp := range mountsUnder(runDir) {
		if err := unix.Unmount(mp, 0); err != nil {
			p.log.Warn("unmount", "path", mp, "err", err)
			// Keep the data safe even if something holds the mount: a read-only remount
			// flushes the journal; the detach lets the rest go on.
			_ = unix.Mount("", mp, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
			}
		}
	}
	unix.Sync()
	p.log.Info("filesystems synced and unmounted; powering off")
	return func() {
		p.shutdownOnce.Do(func() {
			unix.Sync()
			_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		})
	}, errors.Join(errs...)
}

// waitNoProcesses waits until only PID 1 and kernel threads are left.
func waitNoProcesses(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if countUserProcesses() == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func countUserProcesses() int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the parenthesised command name: state ppid ... ; kernel threads are
		// children of kthreadd (PID 2) or kthreadd itself.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || pid == 2 || f[1] == "2" || f[0] == "Z" {
			continue
		}
		n++
	}
	return n
}

// mountsUnder lists the mount points at or below dir, most recent first (the order to
// unmount them in).
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// unescapeMountinfo undoes the octal escapes (\040 for space, ...) of /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

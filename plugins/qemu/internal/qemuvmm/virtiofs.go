package qemuvmm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// Share transports (share_transport in the plugin's config).
const (
	// transportAuto: virtio-fs when virtiofsd is found, else 9p.
	transportAuto = "auto"
	// transport9p: virtio-9p served by QEMU itself.
	transport9p = "9p"
	// transportVirtioFS: vhost-user-fs, one virtiofsd per share.
	transportVirtioFS = "virtio-fs"
)

// virtiofsdPaths are where distributions install virtiofsd: QEMU's own C
// daemon (Debian's qemu-system-common up to QEMU 7.2) and the Rust one.
var virtiofsdPaths = []string{"/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd"}

// findVirtiofsd returns the virtiofsd to use: the configured one, else the
// first of virtiofsdPaths, else virtiofsd on $PATH; "" when there is none.
func findVirtiofsd(configured string) string {
	if configured != "" {
		if p, err := exec.LookPath(configured); err == nil {
			return p
		}
		return ""
	}
	for _, p := range virtiofsdPaths {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath("virtiofsd"); err == nil {
		return p
	}
	return ""
}

// shareTransport resolves the configured transport for a VM with shares.
// userNS says whether virtiofsd would run in a user namespace (see
// virtiofsDaemon.UID), which the host must allow.
func shareTransport(s settings, userNS bool) (transport, virtiofsd string, err error) {
	want := s.ShareTransport
	if want == "" {
		want = transportAuto
	}
	if want == transport9p {
		return transport9p, "", nil
	}
	virtiofsd = findVirtiofsd(s.Virtiofsd)
	if virtiofsd != "" && userNS {
		if why := userNamespacesRefused(); why != "" {
			if want == transportAuto {
				return transport9p, "", nil
			}
			return "", "", fmt.Errorf("share_transport = \"virtio-fs\": virtiofsd runs in a user namespace, and %s: allow them, or use share_transport = \"9p\": %w", why, sdk.ErrInvalidState)
		}
	}
	switch {
	case virtiofsd != "":
		return transportVirtioFS, virtiofsd, nil
	case want == transportAuto:
		return transport9p, "", nil
	case s.Virtiofsd != "":
		return "", "", fmt.Errorf("share_transport = \"virtio-fs\", but virtiofsd = %q is not found: install it or correct the path: %w", s.Virtiofsd, sdk.ErrInvalidState)
	}
	return "", "", fmt.Errorf("share_transport = \"virtio-fs\", but no virtiofsd is found (looked in %s and $PATH): install it (Debian: qemu-system-common up to bookworm, the virtiofsd package after), set virtiofsd in the plugin's config, or use share_transport = \"9p\": %w",
		strings.Join(virtiofsdPaths, ", "), sdk.ErrInvalidState)
}

// userNamespacesRefused says why this process may not make a user
// namespace, or "" when it may.
func userNamespacesRefused() string {
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return "this host allows none (user.max_user_namespaces = 0)"
	}
	if os.Geteuid() != 0 {
		if b, err := os.ReadFile("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && strings.TrimSpace(string(b)) == "0" {
			return "this host allows them only to root (kernel.unprivileged_userns_clone = 0)"
		}
	}
	return ""
}

// virtiofsDaemon is one virtiofsd the launcher runs for a share, before
// QEMU (QEMU's syscall filter forbids it to start processes).
type virtiofsDaemon struct {
	Binary string `json:"binary"`
	// Source is the shared directory (absolute, symlinks resolved by the
	// core).
	Source   string `json:"source"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// Socket is where the launcher binds virtiofsd's vhost-user socket;
	// QEMU gets a connection to it as a descriptor (fdVhostUser).
	Socket string `json:"socket"`
	// UID and GID, when not 0, are the host user that root in virtiofsd's
	// own user namespace is (QEMU's user): virtiofsd then has no privilege
	// on the host beyond that user's, and files the guest's root creates
	// belong to that user, as with 9p. 0: virtiofsd runs as the
	// launcher's user (root, for a root boxctl with confinement off).
	UID uint32 `json:"uid,omitempty"`
	GID uint32 `json:"gid,omitempty"`
}

// virtioFS adds a vhost-user-fs device per share, each served by a
// virtiofsd the launcher starts, and the shared guest memory vhost-user
// needs. Only VMs with such shares get the memfd memory backend, so the
// devices and memory of every other VM (and the states saved from them)
// stay as they were.
func (lc *launchConfig) virtioFS(shares []sdk.ShareSpec, spec sdk.VMSpec, virtiofsd string) {
	uid, gid := lc.Jail.UID, lc.Jail.GID
	if uid == 0 && os.Geteuid() != 0 {
		uid, gid = uint32(os.Geteuid()), uint32(os.Getegid())
	}
	mem := fmt.Sprintf("%dM", spec.MemoryMiB)
	lc.Args = append(lc.Args,
		"-object", "memory-backend-memfd,id=mem,size="+mem+",share=on",
		"-numa", "node,memdev=mem")
	for i, sh := range shares {
		sock := filepath.Join(lc.RunDir, fmt.Sprintf("virtiofs%d.sock", i))
		lc.VirtioFS = append(lc.VirtioFS, virtiofsDaemon{Binary: virtiofsd, Source: sh.HostPath, ReadOnly: sh.ReadOnly, Socket: sock, UID: uid, GID: gid})
		id := fmt.Sprintf("vfs%d", i)
		lc.Args = append(lc.Args,
			"-chardev", fmt.Sprintf("socket,id=%s,fd=%d", id, lc.add(fdVhostUser, sock, "")),
			"-device", "vhost-user-fs-pci,chardev="+id+",tag="+sh.Tag+",queue-size=1024")
	}
}

// shareFSArg is the boot argument that tells the guest how its shares
// arrive.
func shareFSArg(transport string) string {
	if transport == transportVirtioFS {
		return guestboot.ShareFSArg(guestboot.ShareFSVirtioFS)
	}
	return guestboot.ShareFSArg(guestboot.ShareFS9p)
}

// virtiofsdFD is the descriptor number of the listening vhost-user socket
// in virtiofsd.
const virtiofsdFD = 3

// startVirtiofsd binds d's socket and starts its virtiofsd from a thread
// of the launcher's with a mount namespace of its own (confineShare), in a
// user namespace where d.UID is set, in cgroup when it is not nil (the
// box's, which QEMU joins too), with no-new-privileges when noNewPrivs.
// It is killed when the launcher dies (the parent-death signal, from that
// thread, kept for virtiofsd's life) and by the returned stop.
//
// An unprivileged launcher cannot make a mount namespace of its own, only
// one inside a user namespace, which a multi-threaded process cannot
// enter: it starts exe (its own binary, which its user can run) as
// `virtiofsd-exec` in new user and mount namespaces instead, which
// confines the share there and then becomes virtiofsd (VirtiofsdExec).
func startVirtiofsd(exe string, d virtiofsDaemon, cgroup *os.File, noNewPrivs bool, stderr io.Writer) (stop func(), err error) {
	ln, err := listenUnix(d.Socket)
	if err != nil {
		return nil, fmt.Errorf("virtiofsd for %s: %w", d.Source, err)
	}
	defer ln.Close() // virtiofsd has its copy
	viaHelper := os.Geteuid() != 0
	args := []string{
		fmt.Sprintf("--fd=%d", virtiofsdFD),
		"-o", "source=" + fuseOptEscape(d.Source),
		"-o", "sandbox=namespace",
		// The guest sees what the host changes at once, as with 9p's
		// cache=none.
		"-o", "cache=none",
		"-o", "log_level=warn",
		"--rlimit-nofile=0",
	}
	cmd := exec.Command(d.Binary, args...)
	if viaHelper {
		mode := "rw"
		if d.ReadOnly {
			mode = "ro"
		}
		cmd = exec.Command(exe, append([]string{virtiofsdExecCommand, d.Source, mode, d.Binary}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.ExtraFiles = []*os.File{ln}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if cgroup != nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cgroup.Fd())
	}
	if d.UID != 0 {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(d.UID), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(d.GID), Size: 1}}
		// Root of the namespace, with no supplementary group of the
		// launcher's (a root launcher's would give access as group 0);
		// an unprivileged launcher may not call setgroups, and has no
		// groups to drop but its own.
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: os.Geteuid() != 0}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = os.Geteuid() == 0
	}
	if viaHelper {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNS
	}
	started := make(chan error, 1)
	waited := make(chan error, 1)
	go func() {
		// Never unlocked: no other goroutine runs on this thread, in the
		// mount namespace it makes (Go ends the thread when this goroutine
		// returns, after virtiofsd, or parks it if it is the main one; new
		// threads are not cloned from a locked one), and it lives as long
		// as virtiofsd, whose parent-death signal it carries.
		runtime.LockOSThread()
		if !viaHelper {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				started <- fmt.Errorf("a mount namespace for virtiofsd: %w", err)
				return
			}
			if err := confineShare(d.Source, d.ReadOnly); err != nil {
				started <- err
				return
			}
		}
		if noNewPrivs {
			// Set after the mounts, which it does not restrict; nothing
			// virtiofsd execs can gain privileges.
			if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
				started <- fmt.Errorf("set no-new-privileges: %w", err)
				return
			}
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		waited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start virtiofsd for %s: %w", d.Source, err)
	}
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-waited:
		case <-time.After(2 * time.Second):
			_ = cmd.Process.Kill()
			<-waited
		}
		_ = os.Remove(d.Socket)
	}, nil
}

// virtiofsdExecCommand is the plugin's subcommand with which an
// unprivileged launcher starts virtiofsd: `boxctl-plugin-qemu
// virtiofsd-exec SOURCE ro|rw VIRTIOFSD ARGS...`.
const virtiofsdExecCommand = "virtiofsd-exec"

// VirtiofsdExec is the virtiofsd-exec subcommand (args: what follows it).
// It runs as root of the user namespace the launcher made for it, in a
// mount namespace of that user namespace's: it confines the share there
// (confineShare) and execs virtiofsd.
func VirtiofsdExec(args []string, stderr io.Writer) int {
	if len(args) < 3 || (args[1] != "ro" && args[1] != "rw") {
		fmt.Fprintf(stderr, "usage: boxctl-plugin-qemu %s SOURCE ro|rw VIRTIOFSD [ARGS...]\n", virtiofsdExecCommand)
		return 2
	}
	if err := confineShare(args[0], args[1] == "ro"); err != nil {
		fmt.Fprintf(stderr, "boxctl-plugin-qemu %s: %v\n", virtiofsdExecCommand, err)
		return 125
	}
	err := syscall.Exec(args[2], append([]string{args[2]}, args[3:]...), os.Environ())
	fmt.Fprintf(stderr, "boxctl-plugin-qemu %s: exec %s: %v\n", virtiofsdExecCommand, args[2], err)
	return 126
}

// fuseOptEscape escapes s for a -o option list, which virtiofsd splits at
// commas: a backslash keeps the next character as it is.
func fuseOptEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, ",", `\,`).Replace(s)
}

// connectUnix connects to the unix socket at path for QEMU (a vhost-user
// client end).
func connectUnix(path string) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect to %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// confineShare prepares the calling thread's own mount namespace for
// virtiofsd: its mounts do not reach the host's namespace, and for a ro
// share SOURCE (with every mount below it) is read-only there. virtiofsd's
// own sandbox then pivots into SOURCE, in a namespace where these mounts
// are locked: the kernel refuses every write to a read-only share on the
// host side, whatever the guest asks virtiofsd, and nothing outside
// SOURCE is reachable.
func confineShare(source string, ro bool) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if !ro {
		return nil
	}
	if err := unix.Mount(source, source, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", source, err)
	}
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	err := unix.MountSetattr(unix.AT_FDCWD, source, unix.AT_RECURSIVE|unix.AT_SYMLINK_NOFOLLOW, attr)
	if errors.Is(err, unix.ENOSYS) {
		// Before Linux 5.12: the top mount only.
		err = unix.Mount("", source, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "")
	}
	if err != nil {
		return fmt.Errorf("make %s read-only: %w", source, err)
	}
	return nil
}

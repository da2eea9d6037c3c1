package qemuvmm

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// What the launcher opens for QEMU (fdSpec.Kind).
const (
	fdDiskRO = "disk-ro" // a disk file, read-only
	fdDiskRW = "disk-rw" // a disk file, read-write
	fdLog    = "log"     // the console log, created and truncated
	fdListen = "listen"  // a listening unix socket bound at Path
	fdEvents = "events"  // QEMU's end of the launcher's private QMP connection
	fdNet    = "net"     // QEMU's end of the guest's link to the user-mode network
	fdState  = "state"   // a saved state to start from (-incoming), read-only
	// fdVhostUser is QEMU's end of a connection to the vhost-user socket
	// at Path (a virtiofsd the launcher started).
	fdVhostUser = "vhost-user"
)

// fdSpec is one file descriptor the launcher hands QEMU. QEMU opens no path
// of its own: it may run as a user that cannot reach the box's files, and
// a path is something an attacker can swap between check and use.
type fdSpec struct {
	Kind string `json:"kind"`
	Path string `json:"path,omitempty"`
	// Format of a disk file ("raw" or "qcow2"), checked by the launcher.
	Format string `json:"format,omitempty"`
}

// firstFD is the number of the first descriptor in cmd.ExtraFiles.
const firstFD = 3

// add appends a descriptor and returns the number QEMU will see it as.
func (lc *launchConfig) add(kind, path, format string) int {
	lc.FDs = append(lc.FDs, fdSpec{Kind: kind, Path: path, Format: format})
	return firstFD + len(lc.FDs) - 1
}

// addFdset passes a file as an fd set of its own and returns the name
// QEMU opens it by.
func (lc *launchConfig) addFdset(kind, path, format string) string {
	fd := lc.add(kind, path, format)
	lc.Args = append(lc.Args, "-add-fd", fmt.Sprintf("fd=%d,set=%d", fd, fd))
	return "/dev/fdset/" + strconv.Itoa(fd)
}

// sandboxArg is QEMU's syscall filter: no obsolete syscalls, no setuid and
// friends, no fork/exec, no scheduler or affinity changes.
const sandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// baseKernelArgs keep boot fast and quiet; see guest/README.md. The guest
// boot contract itself (disks, network, agent port) comes rendered in
// VMSpec.KernelArgs.
//
// cryptomgr.notests skips the crypto API's boot-time self-tests of every
// registered algorithm: about 0.3 s of a TCG boot (bench/coldboot). They
// check that implementations compute right (FIPS wants them), which is no
// part of the VM's isolation; a user who wants them back sets kernel_args =
// ["cryptomgr.notests=0"] (the last value wins). mitigations stay on.
var baseKernelArgs = []string{"console=ttyS0", "quiet", "panic=-1", "reboot=t", "tsc=reliable", "no_timer_check",
	"i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd", "cryptomgr.notests"}

// qemuArgs fills lc.Args and lc.FDs for spec.
func qemuArgs(lc *launchConfig, spec sdk.VMSpec, s settings, accel, kernel, initrd string) error {
	cpu := cpuModel(accel)
	lc.Args = []string{
		"-name", "boxctl-" + spec.BoxID,
		"-machine", s.Machine + ",accel=" + accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(spec.VCPUs),
		"-m", strconv.FormatUint(spec.MemoryMiB, 10) + "M",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
	}
	if !lc.Jail.Disabled {
		lc.Args = append(lc.Args, "-sandbox", sandboxArg)
	}
	console := lc.addFdset(fdLog, lc.ConsoleLog, "")
	lc.Args = append(lc.Args,
		"-chardev", "file,id=console,path="+console,
		"-serial", "chardev:console",
		"-chardev", fmt.Sprintf("socket,id=agent,fd=%d,server=on,wait=off", lc.add(fdListen, lc.SerialSock, "")),
		// A new generation ID on every start, restores included, so a
		// guest driver can tell it was restored and reseed its RNG.
		// Debian's cloud kernel (the boxctl guest's) has no VMGENID
		// driver: there the guest agent's reseed after a restore, with
		// entropy from the host, is what makes two forks differ.
		"-device", "vmgenid,guid=auto",
		"-device", "virtio-serial-pci",
		"-device", "virtserialport,chardev=agent,name="+guestboot.SerialPort,
		// The plugin's monitor, for Stop/Pause/Resume from any process.
		"-chardev", fmt.Sprintf("socket,id=qmp,fd=%d,server=on,wait=off", lc.add(fdListen, lc.QMPSock, "")),
		"-mon", "chardev=qmp,mode=control",
		// The launcher's own monitor, for events: a connected socket pair,
		// so nobody else can take it.
		"-chardev", fmt.Sprintf("socket,id=events,fd=%d", lc.add(fdEvents, "", "")),
		"-mon", "chardev=events,mode=control",
	)
	// The disks in spec order are the guest's vda, vdb, ...: the core's
	// boot arguments name them so.
	for i, d := range spec.Disks {
		dev, err := guestboot.DeviceName(i)
		if err != nil {
			return fmt.Errorf("spec.Disks[%d]: %w: %w", i, err, sdk.ErrInvalidArgument)
		}
		if err := lc.disk(dev, i, d); err != nil {
			return err
		}
	}
	if err := lc.shares(spec, s); err != nil {
		return err
	}
	if err := lc.network(spec.Network); err != nil {
		return err
	}
	if lc.Network != nil {
		lc.Network.ResolvConf = s.ResolvConf
	}
	cmdline := append([]string{}, baseKernelArgs...)
	cmdline = append(cmdline, spec.KernelArgs...)
	if len(spec.Shares) > 0 {
		cmdline = append(cmdline, shareFSArg(s.ShareTransport))
	}
	cmdline = append(cmdline, s.KernelArgs...)
	lc.Args = append(lc.Args, "-append", strings.Join(cmdline, " "))
	if lc.Restore != "" {
		// The same devices as the boot that saved the state, and its RAM
		// from the file instead of a boot (the kernel arguments are
		// kept: they change no device).
		lc.Args = append(lc.Args, "-incoming", fmt.Sprintf("fd:%d", lc.add(fdState, lc.Restore, "")))
	}
	return nil
}

// cpuModel is the guest CPU for accel.
func cpuModel(accel string) string {
	if accel == "kvm" {
		return "host"
	}
	return "max"
}

// disk adds disk d as guest device dev: one file node and one format node
// for each file of its chain, each named explicitly, so QEMU never follows
// a backing-file name found in a file (a qcow2 header may name any file on
// the host). The image disk and all backing files are read-only.
func (lc *launchConfig) disk(dev string, i int, d sdk.DiskSpec) error {
	type layer struct{ path, format string }
	layers := []layer{{d.Path, d.Format}}
	for _, c := range d.BackingChain {
		layers = append(layers, layer{c.Path, c.Format})
	}
	for j, l := range layers {
		what := fmt.Sprintf("spec.Disks[%d] (%s)", i, d.Path)
		if j > 0 {
			what = fmt.Sprintf("spec.Disks[%d].BackingChain[%d] (%s)", i, j-1, l.path)
		}
		if l.format != "raw" && l.format != "qcow2" {
			return fmt.Errorf("%s: format %q is not raw or qcow2: %w", what, l.format, sdk.ErrInvalidArgument)
		}
		if l.path == "" || !fileExists(l.path) {
			return fmt.Errorf("%s: %q does not exist: %w", what, l.path, sdk.ErrInvalidArgument)
		}
		if l.format == "raw" && j < len(layers)-1 {
			return fmt.Errorf("%s: a raw file cannot have a backing file, but the chain continues with %s: %w", what, layers[j+1].path, sdk.ErrInvalidArgument)
		}
	}
	writable := !d.ReadOnly
	cache := diskCache(writable)
	node := func(j int) string {
		if j == 0 {
			return dev
		}
		return fmt.Sprintf("%s-b%d", dev, j)
	}
	// Backing nodes first: a node must exist before another refers to it.
	for j := len(layers) - 1; j >= 0; j-- {
		l := layers[j]
		rw := writable && j == 0
		kind := fdDiskRO
		if rw {
			kind = fdDiskRW
		}
		backing := ""
		if j < len(layers)-1 {
			backing = node(j + 1)
		}
		for _, n := range blockNodes(node(j), lc.addFdset(kind, l.path, l.format), l.format, rw, cache, backing) {
			b, err := json.Marshal(n)
			if err != nil {
				return err
			}
			lc.Args = append(lc.Args, "-blockdev", string(b))
		}
	}
	device := "virtio-blk-pci,drive=" + dev
	if writable {
		// A full host filesystem pauses the VM (the launcher reports it in
		// the state file) instead of failing the guest's writes.
		device += ",werror=enospc,rerror=report"
	}
	lc.Args = append(lc.Args, "-device", device)
	return nil
}

// diskCache is the cache mode of every node of a disk: the shared
// read-only image disk never flushes (cache=unsafe); a writable disk is
// write-back.
func diskCache(writable bool) map[string]any {
	return map[string]any{"direct": false, "no-flush": !writable}
}

// blockNodes are the two -blockdev nodes of one file of a disk's chain: the
// file node (named node-f) over filename, and the format node (named node)
// over it. A qcow2 node's backing is the node named backing, or explicitly
// none (null) when that is empty, whatever the file's header says. Writable
// nodes pass the guest's discards down to the file.
func blockNodes(node, filename, format string, rw bool, cache map[string]any, backing string) []map[string]any {
	file := map[string]any{"driver": "file", "node-name": node + "-f", "filename": filename, "read-only": !rw, "cache": cache}
	top := map[string]any{"driver": format, "node-name": node, "file": node + "-f", "read-only": !rw, "cache": cache}
	if rw {
		file["discard"], top["discard"] = "unmap", "unmap"
	}
	if format == "qcow2" {
		top["backing"] = nil
		if backing != "" {
			top["backing"] = backing
		}
	}
	return []map[string]any{file, top}
}

// network adds the guest's NIC, attached to the launcher's user-mode
// network (sdk/usernet) over a socket pair. The launcher's stack, not
// QEMU's slirp, makes the guest's connections, so the host's loopback and
// own addresses stay closed unless the spec allows them. The guest's
// addresses are the guest boot contract's (guestboot), in the core's boot
// arguments. Without a network the guest has only loopback.
func (lc *launchConfig) network(n sdk.NetworkSpec) error {
	if err := checkAllow(n); err != nil {
		return err
	}
	switch n.Mode {
	case sdk.NetworkNone:
		return nil
	case sdk.NetworkUser:
	default:
		return fmt.Errorf("spec.Network.Mode %d: the qemu plugin offers no network (NetworkNone) and user-mode networking (NetworkUser): %w", n.Mode, sdk.ErrInvalidArgument)
	}
	lc.Network = &netSettings{AllowHostLoopback: n.AllowHostLoopback, Ports: n.Ports, Allow: n.Allow}
	lc.Args = append(lc.Args,
		"-netdev", fmt.Sprintf("socket,id=net0,fd=%d", lc.add(fdNet, "", "")),
		"-device", "virtio-net-pci,netdev=net0,romfile=")
	return nil
}

// netSettings is what the launcher's user-mode network needs.
type netSettings struct {
	AllowHostLoopback bool              `json:"allow_host_loopback,omitempty"`
	Ports             []sdk.PortForward `json:"ports,omitempty"`
	// Allow is the egress allow-list the launcher's stack enforces.
	Allow []sdk.NetworkAllow `json:"allow,omitempty"`
	// ResolvConf is where the stack reads the host's nameservers
	// (resolv_conf in the plugin's config); empty: /etc/resolv.conf.
	ResolvConf string `json:"resolv_conf,omitempty"`
}

// checkAllow refuses an allow-list without a network to apply it to, and
// rules that do not validate (one that allowed nothing by mistake would be
// as wrong as one that allowed everything).
func checkAllow(n sdk.NetworkSpec) error {
	if len(n.Allow) > 0 && n.Mode != sdk.NetworkUser {
		return fmt.Errorf("spec.Network.Allow: an allow-list needs the user-mode network (NetworkUser): %w", sdk.ErrInvalidArgument)
	}
	for i, a := range n.Allow {
		if err := a.Validate(); err != nil {
			return fmt.Errorf("spec.Network.Allow[%d]: %w: %w", i, err, sdk.ErrInvalidArgument)
		}
	}
	return nil
}

// shares adds the spec's shares over the transport in s (resolved by
// Plan): virtio-fs (see virtioFS) or virtio-9p.
//
// A virtio-9p device per share: unlike a disk, a 9p share is
// not a descriptor the launcher can hand over: QEMU opens the directory
// itself (-fsdev local), as the user it runs as. QEMU resolves every path
// of the share below that directory without following symlinks (a symlink
// in the share is returned to the guest as a symlink, which the guest
// resolves in its own tree), and readonly=on makes QEMU refuse every
// write, whatever the guest mounts. security_model=none: files are
// created as QEMU's user, with the host's modes and owners as they are
// (see docs/volumes.md, "Ownership").
func (lc *launchConfig) shares(spec sdk.VMSpec, s settings) error {
	shares := spec.Shares
	for i, sh := range shares {
		if sh.Tag == "" || len(sh.Tag) > 31 || strings.ContainsAny(sh.Tag, ",= ") {
			return fmt.Errorf("spec.Shares[%d].Tag %q: want 1-31 bytes without ',', '=' or spaces: %w", i, sh.Tag, sdk.ErrInvalidArgument)
		}
		if !filepath.IsAbs(sh.HostPath) {
			return fmt.Errorf("spec.Shares[%d].HostPath %q is not absolute: %w", i, sh.HostPath, sdk.ErrInvalidArgument)
		}
	}
	if len(shares) > 0 && s.ShareTransport == transportVirtioFS {
		lc.virtioFS(shares, spec, s.Virtiofsd)
		return nil
	}
	for i, sh := range shares {
		id := fmt.Sprintf("fs%d", i)
		fsdev := "local,id=" + id + ",path=" + strings.ReplaceAll(sh.HostPath, ",", ",,") + ",security_model=none"
		if sh.ReadOnly {
			fsdev += ",readonly=on"
		}
		lc.Args = append(lc.Args, "-fsdev", fsdev, "-device", "virtio-9p-pci,fsdev="+id+",mount_tag="+sh.Tag)
	}
	return nil
}

// Package guestboot is the guest boot contract: what a VMM gives the boxctl
// guest so that its agent (PID 1 of every box VM) finds its disks, its
// network and its channel to the host. The core renders it into
// VMSpec.KernelArgs; a VMM plugin appends those arguments to the guest
// kernel's command line unchanged and keeps the rest of the contract:
//
//   - Disks: the spec's disks appear in the guest in spec order as virtio
//     block devices vda, vdb, ... (DeviceName): the image's read-only root
//     filesystem first, the box's writable disk second, data disks after.
//   - Agent channel: either a virtio-serial port named SerialPort ("boxctl.agent"),
//     whose host end speaks the protocol of package sdk/agentmux (a Mux turns
//     it into the plan's agent socket), or a vsock port (VsockPort, 1024 by
//     default) the VMM maps to the plan's agent socket.
//   - Network: with NetworkUser the guest is GuestAddr in Subnet, with
//     GatewayAddr as its gateway and DNSAddr as its resolver (QEMU slirp's
//     layout, which package sdk/usernet serves).
//   - Mounts: each boxctl.mount key names a filesystem the agent mounts at a
//     path inside the box root once the root is up: a host directory share
//     by its tag (ShareSpec.Tag) or a data disk by its device name, read-only
//     or not. The core writes shares as KIND "share" without saying how they
//     travel; the VMM, which chooses the device, appends ShareFSArg (virtio-9p
//     when it appends nothing).
//   - Console: the guest kernel's console goes to the plan's console log
//     (console=ttyS0 on x86 QEMU; the VMM chooses the device).
//
// The agent parses the same keys with Parse; unknown boxctl.* keys are
// warnings there, so an older agent boots with a newer host.
package guestboot

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Kernel command-line keys.
const (
	KeyRoot       = "boxctl.root"       // device of the image's read-only root filesystem
	KeyRootFSType = "boxctl.rootfstype" // its filesystem
	KeyData       = "boxctl.data"       // device of the box's writable disk ("none": in memory)
	KeyDataFSType = "boxctl.datafstype" // its filesystem
	KeyHostname   = "boxctl.hostname"   // the guest's host name
	KeyBoxID      = "boxctl.box_id"     // the ID of the box the VM runs
	KeyDNS        = "boxctl.dns"        // resolvers for the box's resolv.conf, comma separated
	KeyVsockPort  = "boxctl.vsock_port" // vsock port the agent listens on
	KeySerial     = "boxctl.serial"     // name of the agent's virtio-serial port ("none": off)
	KeyDebug      = "boxctl.debug"      // verbose agent logging
	KeyIP         = "boxctl.ip"         // the first NIC's ADDR/PREFIX
	KeyGateway    = "boxctl.gw"         // its default gateway
	// KeyMount is repeated, one per mount: KIND:SOURCE:TARGET:MODE, TARGET
	// percent-encoded (Mount.arg).
	KeyMount = "boxctl.mount"
	// KeyShareFS is the filesystem of every "share" mount (ShareFS9p or
	// ShareFSVirtioFS); the VMM appends it (ShareFSArg).
	KeyShareFS = "boxctl.sharefs"
)

// Share filesystems (KeyShareFS).
const (
	// ShareFS9p: virtio-9p, mounted with trans=virtio (the default).
	ShareFS9p = "9p"
	// ShareFSVirtioFS: virtio-fs, mounted by its tag.
	ShareFSVirtioFS = "virtiofs"
)

// ShareFSArg is the kernel argument with which a VMM tells the guest how its
// host directory shares reach it: a VMM appends it after the core's
// arguments when the VM has shares.
func ShareFSArg(fs string) string {
	return KeyShareFS + "=" + fs
}

// Mount kinds.
const (
	// MountShare is a host directory share; Source is its tag. How it
	// travels (9p, virtio-fs) is Config.ShareFS.
	MountShare = "share"
	// Mount9p is what hosts before KeyShareFS wrote for a share (always
	// 9p); Parse reads it as MountShare.
	//
	// Deprecated: write MountShare; the VMM says how shares travel.
	Mount9p = "9p"
	// MountDisk is an ext4 data disk; Source is its device name (vdc...).
	MountDisk = "disk"
)

// Mount is a filesystem the agent mounts in the box root.
type Mount struct {
	Kind   string
	Source string
	// Target is an absolute path inside the box root.
	Target   string
	ReadOnly bool
}

func (m Mount) arg() string {
	mode := "rw"
	if m.ReadOnly {
		mode = "ro"
	}
	return m.Kind + ":" + m.Source + ":" + strings.ReplaceAll(url.PathEscape(m.Target), ":", "%3A") + ":" + mode
}

func parseMount(val string) (Mount, error) {
	f := strings.Split(val, ":")
	if len(f) != 4 {
		return Mount{}, errors.New("want KIND:SOURCE:TARGET:ro|rw")
	}
	m := Mount{Kind: f[0], Source: f[1]}
	if m.Kind == Mount9p {
		m.Kind = MountShare
	}
	if m.Kind != MountShare && m.Kind != MountDisk {
		return Mount{}, fmt.Errorf("unknown kind %q", m.Kind)
	}
	if m.Source == "" {
		return Mount{}, errors.New("empty source")
	}
	t, err := url.PathUnescape(f[2])
	if err != nil || !strings.HasPrefix(t, "/") {
		return Mount{}, errors.New("target is not an absolute path")
	}
	m.Target = t
	switch f[3] {
	case "ro":
		m.ReadOnly = true
	case "rw":
	default:
		return Mount{}, fmt.Errorf("mode %q is neither ro nor rw", f[3])
	}
	return m, nil
}

// Defaults of the contract.
const (
	// SerialPort is the name of the agent's virtio-serial port.
	SerialPort = "boxctl.agent"
	// VsockPort is the vsock port the agent listens on.
	VsockPort = 1024
	// Hostname is the guest's host name when none is given.
	Hostname = "box"
	// FSType is the filesystem of the root and writable disks.
	FSType = "ext4"
)

// The user-mode network's addresses (QEMU slirp's layout).
var (
	Subnet      = netip.MustParsePrefix("10.0.2.0/24")
	GuestAddr   = netip.MustParseAddr("10.0.2.15")
	GatewayAddr = netip.MustParseAddr("10.0.2.2")
	DNSAddr     = netip.MustParseAddr("10.0.2.3")
)

// DeviceName is the guest device name of the i-th disk of a VM spec: vda,
// vdb, ... vdz.
func DeviceName(i int) (string, error) {
	if i < 0 || i >= 26 {
		return "", fmt.Errorf("disk %d: a VM has at most 26 disks", i)
	}
	return "vd" + string(rune('a'+i)), nil
}

// Config is what the guest agent reads from the kernel command line.
type Config struct {
	// RootDev is the image's read-only root disk: a name under /dev or an
	// absolute path.
	RootDev    string
	RootFSType string
	// DataDev is the box's writable disk; "none" keeps the overlay's upper
	// layer in memory (nothing persists).
	DataDev    string
	DataFSType string
	Hostname   string
	// BoxID is the ID of the box the VM runs (lowercase letters and digits, at most
	// MaxBoxIDLen; see ValidBoxID), which the agent reports in Ping. Empty: not given
	// (an older host). A VM restored from a memory snapshot learns its new ID from the
	// agent's Reidentify call instead, since its command line is the saved VM's.
	BoxID string
	// DNS servers written to the box's /etc/resolv.conf; when empty the
	// image's resolv.conf is left alone.
	DNS []string
	// VsockPort is the vsock port the agent listens on when /dev/vsock
	// exists; 0 disables the vsock transport (the guest then loads no vsock
	// modules).
	VsockPort uint32
	// SerialPort is the name of the virtio-serial port; "none" disables the
	// serial transport.
	SerialPort string
	Debug      bool
	// Addr and Gateway configure the first ethernet interface; without Addr
	// the VM has only loopback.
	Addr    netip.Prefix
	Gateway netip.Addr
	// Mounts are mounted in the box root in order, after the root.
	Mounts []Mount
	// ShareFS is how the MountShare mounts reach the guest: ShareFS9p
	// (the default) or ShareFSVirtioFS.
	ShareFS string
}

// HasShares says whether any mount is a host directory share.
func (c Config) HasShares() bool {
	for _, m := range c.Mounts {
		if m.Kind == MountShare {
			return true
		}
	}
	return false
}

// Has9p says whether the guest mounts a 9p share: only then does it load
// the 9p modules.
func (c Config) Has9p() bool {
	return c.ShareFS == ShareFS9p && c.HasShares()
}

// HasVirtioFS says whether the guest mounts a virtio-fs share: only then
// does it load the fuse and virtiofs modules.
func (c Config) HasVirtioFS() bool {
	return c.ShareFS == ShareFSVirtioFS && c.HasShares()
}

// Default is the configuration a guest assumes for keys not given.
func Default() Config {
	return Config{
		RootDev: "vda", RootFSType: FSType, DataDev: "vdb", DataFSType: FSType,
		Hostname: Hostname, VsockPort: VsockPort, SerialPort: SerialPort,
		ShareFS: ShareFS9p,
	}
}

// UserNetwork sets the guest side of the user-mode network: the address,
// gateway and resolver of package sdk/usernet (and QEMU's slirp).
func (c *Config) UserNetwork() {
	c.Addr = netip.PrefixFrom(GuestAddr, Subnet.Bits())
	c.Gateway = GatewayAddr
	c.DNS = []string{DNSAddr.String()}
}

// ForTransport keeps only the agent transports a VMM offers (its
// sdk.AgentSerial or sdk.AgentVsock capability), so the guest spends no boot
// time on the other; a VMM that says neither keeps both.
func (c *Config) ForTransport(serial, vsock bool) {
	if serial && !vsock {
		c.VsockPort = 0
	}
	if vsock && !serial {
		c.SerialPort = "none"
	}
}

// Args renders c as kernel command-line arguments. Every key is written,
// so the guest never depends on its own defaults matching the host's.
func (c Config) Args() []string {
	args := []string{
		KeyRoot + "=" + c.RootDev,
		KeyRootFSType + "=" + c.RootFSType,
		KeyData + "=" + c.DataDev,
		KeyDataFSType + "=" + c.DataFSType,
		KeyHostname + "=" + c.Hostname,
		KeyVsockPort + "=" + strconv.FormatUint(uint64(c.VsockPort), 10),
		KeySerial + "=" + c.SerialPort,
	}
	if c.BoxID != "" {
		args = append(args, KeyBoxID+"="+c.BoxID)
	}
	if len(c.DNS) > 0 {
		args = append(args, KeyDNS+"="+strings.Join(c.DNS, ","))
	}
	if c.Addr.IsValid() {
		args = append(args, KeyIP+"="+c.Addr.String())
	}
	if c.Gateway.IsValid() {
		args = append(args, KeyGateway+"="+c.Gateway.String())
	}
	if c.Debug {
		args = append(args, KeyDebug+"=1")
	}
	for _, m := range c.Mounts {
		args = append(args, KeyMount+"="+m.arg())
	}
	return args
}

// Parse reads the boxctl.* keys of a kernel command line over Default; later
// keys win. Unknown or malformed keys are returned as warnings, not errors.
func Parse(cmdline string) (Config, []string) {
	c := Default()
	var warnings []string
	for _, f := range strings.Fields(cmdline) {
		key, val, _ := strings.Cut(f, "=")
		if !strings.HasPrefix(key, "boxctl.") {
			continue
		}
		switch key {
		case KeyRoot:
			c.RootDev = val
		case KeyRootFSType:
			c.RootFSType = val
		case KeyData:
			c.DataDev = val
		case KeyDataFSType:
			c.DataFSType = val
		case KeyHostname:
			if err := ValidHostname(val); err != nil {
				warnings = append(warnings, fmt.Sprintf("ignoring %s: %v", f, err))
				continue
			}
			c.Hostname = val
		case KeyBoxID:
			if err := ValidBoxID(val); err != nil {
				warnings = append(warnings, fmt.Sprintf("ignoring %s: %v", f, err))
				continue
			}
			c.BoxID = val
		case KeyDNS:
			c.DNS = nil
			for _, s := range strings.Split(val, ",") {
				if s != "" {
					c.DNS = append(c.DNS, s)
				}
			}
		case KeyVsockPort:
			p, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("ignoring %s: not a port number", f))
				continue
			}
			c.VsockPort = uint32(p)
		case KeySerial:
			c.SerialPort = val
		case KeyDebug:
			c.Debug = val == "" || val == "1" || val == "true"
		case KeyIP:
			pfx, err := netip.ParsePrefix(val)
			if err != nil || !pfx.Addr().Is4() {
				warnings = append(warnings, fmt.Sprintf("ignoring %s: not an IPv4 ADDR/PREFIX", f))
				continue
			}
			c.Addr = pfx
		case KeyGateway:
			a, err := netip.ParseAddr(val)
			if err != nil || !a.Is4() {
				warnings = append(warnings, fmt.Sprintf("ignoring %s: not an IPv4 address", f))
				continue
			}
			c.Gateway = a
		case KeyMount:
			m, err := parseMount(val)
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("ignoring %s: %v", f, err))
				continue
			}
			c.Mounts = append(c.Mounts, m)
		case KeyShareFS:
			if val != ShareFS9p && val != ShareFSVirtioFS {
				warnings = append(warnings, fmt.Sprintf("ignoring %s: neither %s nor %s", f, ShareFS9p, ShareFSVirtioFS))
				continue
			}
			c.ShareFS = val
		default:
			warnings = append(warnings, fmt.Sprintf("ignoring unknown parameter %s", f))
		}
	}
	return c, warnings
}

// MaxBoxIDLen is the longest box ID the contract carries.
const MaxBoxIDLen = 64

// ValidBoxID checks a box ID: 1 to MaxBoxIDLen lowercase ASCII letters and digits (the
// core's IDs are lowercase hex). It keeps the kernel command line and the guest's logs free
// of anything a box name could smuggle in.
func ValidBoxID(id string) error {
	if id == "" {
		return errors.New("box ID is empty")
	}
	if len(id) > MaxBoxIDLen {
		return fmt.Errorf("box ID %.16q... is %d characters long; at most %d are allowed", id, len(id), MaxBoxIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return fmt.Errorf("box ID %q has %q at offset %d; only lowercase letters and digits are allowed", id, c, i)
		}
	}
	return nil
}

// MaxHostnameLen is the longest host name Linux accepts (HOST_NAME_MAX).
const MaxHostnameLen = 64

// ValidHostname checks a host name as the guest sets it (sethostname, /etc/hostname,
// /etc/hosts): 1 to MaxHostnameLen characters, dot-separated labels of ASCII letters,
// digits and hyphens, no label empty or starting or ending with a hyphen (RFC 1123).
func ValidHostname(name string) error {
	if name == "" {
		return errors.New("host name is empty")
	}
	if len(name) > MaxHostnameLen {
		return fmt.Errorf("host name %.16q... is %d characters long; at most %d are allowed", name, len(name), MaxHostnameLen)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return fmt.Errorf("host name %q has an empty label", name)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host name %q has a label starting or ending with a hyphen", name)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("host name %q has %q; only letters, digits, hyphens and dots are allowed", name, c)
			}
		}
	}
	return nil
}

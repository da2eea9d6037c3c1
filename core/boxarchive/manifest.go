package boxarchive

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/boxctl/boxctl/internal/namecheck"
)

// The format this package writes and the only version it reads.
const (
	FormatName = "boxctl-box-archive"
	Version    = 1
	// ManifestName is the name of the archive's first member.
	ManifestName = "manifest.json"
)

// Kind says what a member holds.
type Kind string

const (
	// KindDisk is the box's writable disk, flattened (exactly one).
	KindDisk Kind = "disk"
	// KindSnapshot is one snapshot of the disk, flattened.
	KindSnapshot Kind = "snapshot"
	// KindImage is the box's image as an OCI image layout in a tar.
	KindImage Kind = "image"
)

// Member formats and the one compression of version 1.
const (
	FormatQcow2     = "qcow2"
	FormatOCILayout = "oci-layout+tar"
	CompressionZstd = "zstd"
)

// Manifest is the archive's first member.
type Manifest struct {
	Format  string    `json:"format"`
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	Box     Box       `json:"box"`
	// Members in archive order: the disk, the snapshots oldest first,
	// then the image.
	Members []Member `json:"members"`
}

// Box is a box's configuration as exported.
type Box struct {
	// ID is the box's ID where it was exported (an import makes a new one).
	ID        string    `json:"id,omitempty"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	Image     Image     `json:"image"`
	CPUs      int       `json:"cpus"`
	MemoryMiB uint64    `json:"memory_mib"`
	DiskSize  uint64    `json:"disk_size"`
	// Entrypoint and Cmd override the image's when set.
	Entrypoint        []string          `json:"entrypoint,omitempty"`
	Cmd               []string          `json:"cmd,omitempty"`
	Env               []string          `json:"env,omitempty"`
	WorkingDir        string            `json:"working_dir,omitempty"`
	User              string            `json:"user,omitempty"`
	Ports             []Port            `json:"ports,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Health            *Health           `json:"health,omitempty"`
	AutoRemove        bool              `json:"auto_remove,omitempty"`
	Detach            bool              `json:"detach,omitempty"`
	AllowHostLoopback bool              `json:"allow_host_loopback,omitempty"`
	// NetworkMode ("user", "none") and AllowNet (the egress allow-list)
	// travel with the box: an imported box must not come back less
	// confined than it was.
	NetworkMode string   `json:"network_mode,omitempty"`
	AllowNet    []string `json:"allow_net,omitempty"`
	Hostname    string   `json:"hostname,omitempty"`
}

// Image names the image a box runs.
type Image struct {
	Reference string `json:"reference"`
	// Digest is the manifest digest the box was created from.
	Digest string `json:"digest"`
	// Platform is "os/arch[/variant]" when the box asked for one.
	Platform string `json:"platform,omitempty"`
}

// Port publishes HostIP:HostPort on the host as GuestPort in the box.
type Port struct {
	HostIP    string `json:"host_ip,omitempty"`
	HostPort  uint16 `json:"host_port"`
	GuestPort uint16 `json:"guest_port"`
	Protocol  string `json:"protocol,omitempty"`
}

// Health is the box's health check; durations in nanoseconds.
type Health struct {
	Cmd           []string `json:"cmd"`
	IntervalNS    int64    `json:"interval_ns"`
	TimeoutNS     int64    `json:"timeout_ns"`
	Retries       int      `json:"retries"`
	StartPeriodNS int64    `json:"start_period_ns,omitempty"`
}

// Member describes one data member.
type Member struct {
	Name        string `json:"name"`
	Kind        Kind   `json:"kind"`
	Format      string `json:"format"`
	Compression string `json:"compression"`
	// Size is the uncompressed size, CompressedSize the member's size in
	// the tar, SHA256 the hex SHA-256 of the uncompressed bytes.
	Size           int64  `json:"size"`
	CompressedSize int64  `json:"compressed_size"`
	SHA256         string `json:"sha256"`
	// VirtualSize is the guest-visible size of a disk or snapshot.
	VirtualSize uint64 `json:"virtual_size,omitempty"`
	// Snapshot names a snapshot member.
	Snapshot *Snapshot `json:"snapshot,omitempty"`
	// ImageDigest is the manifest digest an image member's layout holds.
	ImageDigest string `json:"image_digest,omitempty"`
}

// Snapshot names a snapshot member's snapshot.
type Snapshot struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// Limits bound what a reader accepts. Zero fields take the defaults.
type Limits struct {
	// MaxManifestSize caps the manifest member (default 1 MiB).
	MaxManifestSize int64
	// MaxDiskSize caps each disk and snapshot member, uncompressed
	// (default 64 GiB).
	MaxDiskSize int64
	// MaxImageSize caps the image member, uncompressed (default 64 GiB).
	MaxImageSize int64
	// MaxSnapshots caps the number of snapshot members (default 256).
	MaxSnapshots int
}

// Default limits.
const (
	DefaultMaxManifestSize = 1 << 20
	DefaultMaxDiskSize     = 64 << 30
	DefaultMaxImageSize    = 64 << 30
	DefaultMaxSnapshots    = 256
)

func (l Limits) withDefaults() Limits {
	if l.MaxManifestSize <= 0 {
		l.MaxManifestSize = DefaultMaxManifestSize
	}
	if l.MaxDiskSize <= 0 {
		l.MaxDiskSize = DefaultMaxDiskSize
	}
	if l.MaxImageSize <= 0 {
		l.MaxImageSize = DefaultMaxImageSize
	}
	if l.MaxSnapshots <= 0 {
		l.MaxSnapshots = DefaultMaxSnapshots
	}
	return l
}

// validMemberName is ^[a-z0-9][a-z0-9._-]{0,63}$.
func validMemberName(s string) bool {
	return namecheck.Name(s, namecheck.LowerAlnum, func(c byte) bool {
		return namecheck.LowerAlnum(c) || c == '.' || c == '_' || c == '-'
	}, 63)
}

// validDigest is ^sha256:[0-9a-f]{64}$.
func validDigest(s string) bool {
	hex, ok := strings.CutPrefix(s, "sha256:")
	return ok && namecheck.SHA256Hex(hex)
}

// maxCompressedSize is the most zstd can emit for n input bytes (raw blocks
// cost 3 bytes per 128 KiB, frames a few bytes each), with room to spare; a
// larger declared compressed size is not something a zstd encoder wrote.
func maxCompressedSize(n int64) int64 { return n + n/128 + 1<<20 }

// decodeManifest parses and checks a manifest. It refuses unknown fields:
// version 1 is closed, anything new is a new version.
func decodeManifest(b []byte, limits Limits) (*Manifest, error) {
	// Format and version first, so that a newer archive is reported as
	// such rather than as a schema error.
	var head struct {
		Format  string `json:"format"`
		Version *int   `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, refuse(ErrNotArchive, ManifestName, "", "not JSON: %v", err)
	}
	if head.Format != FormatName {
		return nil, refuse(ErrNotArchive, ManifestName, "format", "%q, want %q", head.Format, FormatName)
	}
	if head.Version == nil {
		return nil, refuse(ErrManifest, ManifestName, "version", "missing")
	}
	if *head.Version != Version {
		return nil, refuse(ErrVersion, ManifestName, "version", "version %d; this boxctl reads version %d only: import it with the boxctl that exported it, or a newer one", *head.Version, Version)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, refuse(ErrManifest, ManifestName, "", "%v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, refuse(ErrManifest, ManifestName, "", "data after the JSON object")
	}
	if err := m.check(limits); err != nil {
		return nil, err
	}
	return &m, nil
}

// check enforces the format's rules on a manifest (the writer runs it too,
// so it never writes what a reader refuses).
func (m *Manifest) check(limits Limits) error {
	limits = limits.withDefaults()
	bad := func(field, format string, args ...any) error {
		return refuse(ErrManifest, ManifestName, field, format, args...)
	}
	if m.Created.IsZero() {
		return bad("created", "missing")
	}
	if err := m.Box.check(); err != nil {
		return err
	}
	if len(m.Members) == 0 || m.Members[0].Kind != KindDisk {
		return bad("members", "the first member must be the disk")
	}
	names := map[string]bool{}
	snapNames := map[string]bool{}
	snapshots := 0
	for i, mem := range m.Members {
		field := func(f string) string { return fmt.Sprintf("members[%d].%s", i, f) }
		if !validMemberName(mem.Name) {
			kind := ErrManifest
			if strings.Contains(mem.Name, "..") || strings.HasPrefix(mem.Name, "/") {
				kind = ErrUnsafeName
			}
			return refuse(kind, ManifestName, field("name"), "%q: member names are 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit", mem.Name)
		}
		if mem.Name == ManifestName || names[mem.Name] {
			return bad(field("name"), "%q is listed twice", mem.Name)
		}
		names[mem.Name] = true
		if mem.Compression != CompressionZstd {
			return bad(field("compression"), "%q, want %q", mem.Compression, CompressionZstd)
		}
		if !namecheck.SHA256Hex(mem.SHA256) {
			return bad(field("sha256"), "%q is not 64 lower-case hex digits", mem.SHA256)
		}
		if mem.Size < 0 {
			return bad(field("size"), "%d is negative", mem.Size)
		}
		if mem.CompressedSize <= 0 || mem.CompressedSize > maxCompressedSize(mem.Size) {
			return bad(field("compressed_size"), "%d for %d uncompressed bytes is not a size zstd produces", mem.CompressedSize, mem.Size)
		}
		limit := limits.MaxDiskSize
		switch mem.Kind {
		case KindDisk, KindSnapshot:
			if mem.Kind == KindDisk && i != 0 {
				return bad(field("kind"), "a second disk member")
			}
			if mem.Format != FormatQcow2 {
				return bad(field("format"), "%q, want %q", mem.Format, FormatQcow2)
			}
			if mem.VirtualSize == 0 {
				return bad(field("virtual_size"), "missing")
			}
			if mem.ImageDigest != "" {
				return bad(field("image_digest"), "only image members have one")
			}
			if mem.Kind == KindDisk && mem.Snapshot != nil {
				return bad(field("snapshot"), "only snapshot members have one")
			}
			if mem.Kind == KindSnapshot {
				if i > 0 && m.Members[i-1].Kind == KindImage {
					return bad(field("kind"), "snapshots must come before the image")
				}
				snapshots++
				if snapshots > limits.MaxSnapshots {
					return refuse(ErrTooLarge, ManifestName, "members", "more than %d snapshots", limits.MaxSnapshots)
				}
				s := mem.Snapshot
				if s == nil {
					return bad(field("snapshot"), "missing")
				}
				if err := checkSnapshotName(s.Name); err != nil {
					return bad(field("snapshot.name"), "%v", err)
				}
				if snapNames[s.Name] {
					return bad(field("snapshot.name"), "snapshot %q is listed twice", s.Name)
				}
				snapNames[s.Name] = true
				if s.CreatedAt.IsZero() {
					return bad(field("snapshot.created_at"), "missing")
				}
			}
		case KindImage:
			limit = limits.MaxImageSize
			if i != len(m.Members)-1 {
				return bad(field("kind"), "the image must be the last member")
			}
			if mem.Format != FormatOCILayout {
				return bad(field("format"), "%q, want %q", mem.Format, FormatOCILayout)
			}
			if mem.ImageDigest != m.Box.Image.Digest {
				return bad(field("image_digest"), "%q is not the box's image %q", mem.ImageDigest, m.Box.Image.Digest)
			}
			if mem.VirtualSize != 0 || mem.Snapshot != nil {
				return bad(field("kind"), "an image member has no virtual_size or snapshot")
			}
		default:
			return bad(field("kind"), "%q: want disk, snapshot or image", mem.Kind)
		}
		if mem.Size > limit {
			return refuse(ErrTooLarge, mem.Name, field("size"), "%d bytes uncompressed, the limit is %d", mem.Size, limit)
		}
	}
	return nil
}

func (b *Box) check() error {
	bad := func(field, format string, args ...any) error {
		return refuse(ErrManifest, ManifestName, "box."+field, format, args...)
	}
	if !namecheck.BoxName(b.Name) {
		return bad("name", "%q is not a box name (1-128 letters, digits, '_', '.' or '-', starting with a letter or digit)", b.Name)
	}
	if b.Image.Reference == "" || len(b.Image.Reference) > 4096 || !utf8.ValidString(b.Image.Reference) || strings.ContainsAny(b.Image.Reference, "\x00\n") {
		return bad("image.reference", "missing or malformed")
	}
	if !validDigest(b.Image.Digest) {
		return bad("image.digest", "%q is not sha256:<64 hex digits>", b.Image.Digest)
	}
	if b.CPUs < 0 {
		return bad("cpus", "%d is negative", b.CPUs)
	}
	if h := b.Health; h != nil && (h.IntervalNS < 0 || h.TimeoutNS < 0 || h.StartPeriodNS < 0 || h.Retries < 0) {
		return bad("health", "negative durations or retries")
	}
	return nil
}

// checkSnapshotName accepts what a snapshot name may be: 1-255 bytes of
// UTF-8 without control characters (it is only ever metadata).
func checkSnapshotName(name string) error {
	if name == "" || len(name) > 255 || !utf8.ValidString(name) {
		return fmt.Errorf("%q must be 1 to 255 bytes of UTF-8", name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%q contains a control character", name)
		}
	}
	return nil
}

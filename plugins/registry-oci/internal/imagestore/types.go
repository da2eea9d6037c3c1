package imagestore

import (
	"fmt"
	"runtime"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/source"
)

// Sentinel errors; every error from this package that callers may want to
// branch on wraps one of them (errors.Is).
var (
	ErrNotFound       = errdefs.ErrNotFound
	ErrUnauthorized   = errdefs.ErrUnauthorized
	ErrUnreachable    = errdefs.ErrUnreachable
	ErrDigestMismatch = errdefs.ErrDigestMismatch
	ErrBadImage       = errdefs.ErrBadImage
	ErrBadReference   = errdefs.ErrBadReference
	ErrUnsupported    = errdefs.ErrUnsupported
	ErrTooLarge       = errdefs.ErrTooLarge
	ErrNoSpace        = errdefs.ErrNoSpace
)

// RegistryConfig says how registries are reached: mirrors, plain-HTTP hosts
// and credentials (explicit ones first, then Docker's config.json and
// credential helpers unless disabled).
type RegistryConfig = source.RegistryConfig

// Credential is a username/password or bearer token for one registry host.
type Credential = source.Credential

// Platform is an OS/architecture[/variant] triple such as linux/arm64/v8.
type Platform struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Variant      string `json:"variant,omitempty"`
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

func (p Platform) v1() v1.Platform {
	return v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
}

// ParsePlatform parses "os/arch[/variant]".
func ParsePlatform(s string) (Platform, error) {
	p, err := v1.ParsePlatform(s)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return Platform{}, fmt.Errorf("%w: platform %q: want os/arch[/variant], e.g. linux/arm64", ErrBadReference, s)
	}
	return Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}, nil
}

// HostPlatform is the default: Linux guests on the host's architecture.
func HostPlatform() Platform { return Platform{OS: "linux", Architecture: runtime.GOARCH} }

// ImageConfig is the part of the OCI image config a runtime needs.
type ImageConfig struct {
	Entrypoint   []string          `json:"entrypoint,omitempty"`
	Cmd          []string          `json:"cmd,omitempty"`
	Env          []string          `json:"env,omitempty"`
	WorkingDir   string            `json:"workingDir,omitempty"`
	User         string            `json:"user,omitempty"`
	ExposedPorts []string          `json:"exposedPorts,omitempty"` // "80/tcp", sorted
	Volumes      []string          `json:"volumes,omitempty"`      // sorted
	Labels       map[string]string `json:"labels,omitempty"`
	StopSignal   string            `json:"stopSignal,omitempty"`
	OS           string            `json:"os"`
	Architecture string            `json:"architecture"`
	Variant      string            `json:"variant,omitempty"`
	Created      time.Time         `json:"created,omitzero"`
}

// Layer is one layer of an image, bottom first.
type Layer struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"mediaType,omitempty"`
	DiffID    string `json:"diffID"`
}

// Image is a cached image: a platform-specific manifest and its config.
type Image struct {
	// Digest is the manifest digest ("sha256:..."), the image's identity.
	Digest string `json:"digest"`
	// IndexDigest is the multi-platform index it was chosen from, if any.
	IndexDigest  string `json:"indexDigest,omitempty"`
	MediaType    string `json:"mediaType"`
	ConfigDigest string `json:"configDigest"`
	// Size is manifest + config + compressed layers, as downloaded.
	Size     int64       `json:"size"`
	Platform Platform    `json:"platform"`
	Config   ImageConfig `json:"config"`
	Layers   []Layer     `json:"layers"`
	// Ref is the canonical reference this image was pulled or looked up
	// by (set by Pull and Lookup).
	Ref string `json:"-"`
	// Refs lists every reference recorded for the image (set by Pull,
	// List, Image and Lookup).
	Refs []string `json:"-"`
	// PulledAt is when this image record was first written.
	PulledAt time.Time `json:"pulledAt"`
}

// LayerState is where one layer is in a pull.
type LayerState string

const (
	// LayerWaiting: queued, or another process is downloading it.
	LayerWaiting LayerState = "waiting"
	// LayerDownloading: bytes are arriving (Done/Total).
	LayerDownloading LayerState = "downloading"
	// LayerVerifying: all bytes are in; digest check and commit follow.
	LayerVerifying LayerState = "verifying"
	// LayerDone: downloaded and committed.
	LayerDone LayerState = "done"
	// LayerCached: already in the cache; nothing downloaded.
	LayerCached LayerState = "cached"
)

// ProgressEvent reports one layer's progress. Events for one layer arrive in
// order; the callback is never called concurrently.
type ProgressEvent struct {
	Layer string     // layer digest
	Index int        // position in the image, bottom first
	State LayerState //
	Total int64      // bytes (compressed, as downloaded)
	Done  int64
}

// PullPolicy says when Pull contacts the source.
type PullPolicy int

const (
	// PullAlways resolves the reference at the source every time (a cheap
	// manifest request) and downloads only missing blobs. A digest
	// reference already cached is never re-resolved.
	PullAlways PullPolicy = iota
	// PullIfMissing uses a cached image for the reference if there is one.
	PullIfMissing
	// PullNever only looks in the cache.
	PullNever
)

// PullOptions tune Pull.
type PullOptions struct {
	// Platform is "os/arch[/variant]"; empty means the store's default
	// (linux on the host's architecture). When set explicitly, an image
	// built for another platform is an error.
	Platform string
	// Progress receives per-layer events; may be nil.
	Progress func(ProgressEvent)
	// Status receives one-line status messages ("resolved REF to DIGEST");
	// may be nil. It is never called concurrently with Progress.
	Status func(string)
	Policy PullPolicy
}

func (o PullOptions) status(format string, args ...any) {
	if o.Status != nil {
		o.Status(fmt.Sprintf(format, args...))
	}
}

// RootDisk is a built read-only ext4 root filesystem for an image.
type RootDisk struct {
	Path  string
	Size  int64
	Image Image
	// Built reports that this call built the disk (rather than finding it
	// cached or waiting for another process to build it).
	Built bool
}

// PruneReport says what Prune and Remove deleted.
type PruneReport struct {
	Images     []string // manifest digests
	Blobs      int
	RootDisks  int
	BytesFreed int64
}

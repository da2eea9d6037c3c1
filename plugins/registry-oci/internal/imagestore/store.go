// Package imagestore is the image cache behind boxctl's registry-oci
// ImageSource plugin: it pulls images from registries, OCI layouts and
// docker archives into a content-addressed cache shared by every box and
// every boxctl process, and builds one read-only ext4 root disk per image,
// straight from the layer streams.
//
// On-disk layout under the store directory:
//
//	gc.lock                        shared by pulls and builds, exclusive for Remove/Prune
//	blobs/sha256/<hex>             verified blobs: manifests, configs, layers (0444)
//	index/sha256/<hex>             per-layer entry index (derived; rebuilt if missing)
//	images/sha256/<hex>.json       image records, by manifest digest
//	refs/<hex>.json                tag index: one file per (reference, platform)
//	rootfs/v1/<chainid-hex>.ext4   root disks, keyed by the layers' chain ID (0444)
//	locks/                         per-blob, per-index and per-disk lock files
//	tmp/                           in-progress downloads and builds
//
// Every file becomes visible by an atomic rename after fsync, and in
// dependency order: blobs, then the image record, then its references. So a
// reader (any process) that finds a record finds all its blobs, and a crash
// at any point leaves at most complete but unreferenced blobs, a partial
// download in tmp/ (which the next pull of that blob resumes) and stale lock
// files, all of which Prune removes. Per-digest flocks make concurrent pulls
// of one image by several processes download each blob once; a per-disk
// flock makes them build each root disk once. See package blobstore for the
// download protocol.
package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/blobstore"
)

// Store is an image cache in one directory. It is safe for concurrent use by
// goroutines, and by processes sharing the directory.
type Store struct {
	dir         string
	blobs       *blobstore.Store
	reg         RegistryConfig
	concurrency int
	platform    Platform
	maxUnpacked int64
	now         func() time.Time
}

// DefaultMaxUnpackedSize is the default limit on an image's unpacked
// size: far above any real image, far below what fills a host.
const DefaultMaxUnpackedSize = 64 << 30

// Option configures Open.
type Option func(*Store)

// WithRegistryConfig sets mirrors, insecure hosts and credentials.
func WithRegistryConfig(c RegistryConfig) Option { return func(s *Store) { s.reg = c } }

// WithConcurrency sets how many layers download at once (default 3).
func WithConcurrency(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.concurrency = n
		}
	}
}

// WithMaxUnpackedSize limits an image's unpacked size: the sizes its
// layers' entries declare, summed over all layers (see
// layer.DeclaredSize). Pulls and root disk builds of images over it fail
// with ErrTooLarge, naming the layer that crosses it. Default
// DefaultMaxUnpackedSize.
func WithMaxUnpackedSize(n int64) Option {
	return func(s *Store) {
		if n > 0 {
			s.maxUnpacked = n
		}
	}
}

// WithDefaultPlatform sets the platform used when PullOptions.Platform is
// empty (default: HostPlatform()).
func WithDefaultPlatform(p Platform) Option { return func(s *Store) { s.platform = p } }

// Open opens (creating if needed) the image store in dir.
func Open(dir string, opts ...Option) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", dir, err)
	}
	s := &Store{dir: abs, concurrency: 3, platform: HostPlatform(), maxUnpacked: DefaultMaxUnpackedSize, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	if s.blobs, err = blobstore.Open(abs); err != nil {
		return nil, err
	}
	for _, d := range []string{"index/sha256", "images/sha256", "refs", "rootfs/v1"} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("image store %s: %w", abs, err)
		}
	}
	return s, nil
}

// Dir returns the store directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) gcLockPath() string { return filepath.Join(s.dir, "gc.lock") }

func (s *Store) recordPath(d v1.Hash) string {
	return filepath.Join(s.dir, "images", "sha256", d.Hex+".json")
}

func (s *Store) indexPath(d v1.Hash) string {
	return filepath.Join(s.dir, "index", "sha256", d.Hex)
}

func (s *Store) rootfsPath(key string) string {
	return filepath.Join(s.dir, "rootfs", "v1", key+".ext4")
}

func refKey(ref string, p Platform) string {
	h := sha256.Sum256([]byte(ref + "\n" + p.String()))
	return hex.EncodeToString(h[:])
}

func (s *Store) refPath(ref string, p Platform) string {
	return filepath.Join(s.dir, "refs", refKey(ref, p)+".json")
}

// parseDigest accepts "sha256:<hex>" or a bare 64-hex string.
func parseDigest(d string) (v1.Hash, error) {
	if !strings.Contains(d, ":") {
		d = "sha256:" + d
	}
	h, err := v1.NewHash(d)
	if err != nil || h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return v1.Hash{}, fmt.Errorf("%w: %q is not an image digest (want sha256:<64 hex>)", ErrBadReference, d)
	}
	return h, nil
}

// refRecord is one entry of the tag index.
type refRecord struct {
	Ref         string    `json:"ref"`
	Platform    Platform  `json:"platform"`
	Digest      string    `json:"digest"`
	IndexDigest string    `json:"indexDigest,omitempty"`
	UpdatedAt   time.Time `json:"updatedAt"`
}

func (s *Store) writeJSON(dst string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return blobstore.WriteFileAtomic(s.blobs.TmpDir(), dst, 0o644, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func (s *Store) readRecord(d v1.Hash) (Image, error) {
	var img Image
	err := readJSON(s.recordPath(d), &img)
	if errors.Is(err, fs.ErrNotExist) {
		return Image{}, fmt.Errorf("%w: image %s is not in the cache", ErrNotFound, d)
	}
	if err != nil {
		return Image{}, fmt.Errorf("read image record %s: %w", d, err)
	}
	return img, nil
}

func (s *Store) readRefs() ([]refRecord, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "refs"))
	if err != nil {
		return nil, fmt.Errorf("list references: %w", err)
	}
	var out []refRecord
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		var r refRecord
		if err := readJSON(filepath.Join(s.dir, "refs", e.Name()), &r); err != nil {
			continue // removed concurrently, or torn by a crash of an old writer
		}
		out = append(out, r)
	}
	return out, nil
}

func refsOf(refs []refRecord, digest string) []string {
	var out []string
	seen := map[string]bool{}
	for _, r := range refs {
		if r.Digest == digest && !seen[r.Ref] {
			seen[r.Ref] = true
			out = append(out, r.Ref)
		}
	}
	sort.Strings(out)
	return out
}

// Image returns the cached image with manifest digest d.
func (s *Store) Image(digest string) (Image, error) {
	d, err := parseDigest(digest)
	if err != nil {
		return Image{}, err
	}
	img, err := s.readRecord(d)
	if err != nil {
		return Image{}, err
	}
	refs, err := s.readRefs()
	if err != nil {
		return Image{}, err
	}
	img.Refs = refsOf(refs, img.Digest)
	return img, nil
}

// List returns every cached image, most recently pulled first.
func (s *Store) List() ([]Image, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "images", "sha256"))
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	refs, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	var out []Image
	for _, e := range ents {
		hx, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		img, err := s.readRecord(v1.Hash{Algorithm: "sha256", Hex: hx})
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			return nil, err
		}
		img.Refs = refsOf(refs, img.Digest)
		out = append(out, img)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].PulledAt.After(out[j].PulledAt) })
	return out, nil
}

// chainID is the OCI chain ID of a layer stack: the identity of the root
// filesystem regardless of manifest, compression or tags.
func chainID(diffIDs []string) string {
	var cur string
	for i, d := range diffIDs {
		if i == 0 {
			cur = d
			continue
		}
		h := sha256.Sum256([]byte(cur + " " + d))
		cur = "sha256:" + hex.EncodeToString(h[:])
	}
	if cur == "" {
		h := sha256.Sum256(nil)
		return hex.EncodeToString(h[:])
	}
	return strings.TrimPrefix(cur, "sha256:")
}

func (img Image) chainID() string {
	ids := make([]string, len(img.Layers))
	for i, l := range img.Layers {
		ids[i] = l.DiffID
	}
	return chainID(ids)
}

func (s *Store) sharedLock(ctx context.Context) (*lockfile.Lock, error) {
	return lockfile.Acquire(ctx, s.gcLockPath(), true)
}

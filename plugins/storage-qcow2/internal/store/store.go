package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/plugins/storage-qcow2/qcow2"
	"github.com/boxctl/boxctl/sdk"
)

// Version is the plugin's version.
const Version = "0.1.0"

// CrashEnv is the environment variable the plugin binary reads to install
// the crash test hook (see WithCrashHook).
const CrashEnv = "BOXCTL_QCOW2_CRASH_AT"

// minDiskSize is the smallest disk CreateDisk makes (mkfs.ext4 needs room
// for its metadata and journal).
const minDiskSize = 1 << 20

// Store implements sdk.DiskBackend and sdk.SnapshotBackend over a state
// directory. One Store serves both roles of a plugin process; any number of
// processes may share one state directory.
type Store struct {
	log         hclog.Logger
	crash       func(point string)
	lockTimeout time.Duration
	dbTimeout   time.Duration

	mu  sync.Mutex
	cfg *settings
}

// Store serves every storage feature; the sdk advertises the optional
// ones from these interfaces, so losing one to a changed signature would
// silently drop a capability.
var (
	_ sdk.DiskBackend     = (*Store)(nil)
	_ sdk.DiskInspector   = (*Store)(nil)
	_ sdk.Resizer         = (*Store)(nil)
	_ sdk.Exporter        = (*Store)(nil)
	_ sdk.Importer        = (*Store)(nil)
	_ sdk.SnapshotBackend = (*Store)(nil)
	_ sdk.Cloner          = (*Store)(nil)
)

// settings is the applied configuration.
type settings struct {
	dir            string
	clusterSize    int
	maxVirtualSize uint64
	mkfs           string // "" when none was found
	db             *metaDB
}

func (c *settings) path(rel string) string { return filepath.Join(c.dir, rel) }

// Option configures New.
type Option func(*Store)

// WithLogger sets the logger (default: none).
func WithLogger(l hclog.Logger) Option { return func(s *Store) { s.log = l } }

// WithCrashHook installs a test hook called with "<op>:<step>" at every
// step of every multi-step operation (CrashPoints lists them). The plugin
// binary installs one that exits the process when the point equals
// $BOXCTL_QCOW2_CRASH_AT, for the crash tests. Never use it otherwise.
func WithCrashHook(fn func(point string)) Option { return func(s *Store) { s.crash = fn } }

// WithLockTimeout bounds how long an operation waits for another operation
// on the same disk (default 2 minutes).
func WithLockTimeout(d time.Duration) Option { return func(s *Store) { s.lockTimeout = d } }

// New returns an unconfigured Store.
func New(opts ...Option) *Store {
	s := &Store{
		log:         hclog.NewNullLogger(),
		lockTimeout: 2 * time.Minute,
		dbTimeout:   30 * time.Second,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// CrashPoints lists every "<op>:<step>" the crash hook is called with, in
// the order an operation reaches them. The "clone" op is a clone that
// freezes the source's current state; "clone-shared" one that overlays an
// existing base (from a snapshot, or a source with an empty overlay).
// Steps named garbage-deleted are only reached when the operation freed
// files.
func CrashPoints() []string {
	return []string{
		"create:journaled", "create:blank-built", "create:blank-renamed", "create:overlay-created", "create:renamed", "create:committed",
		"snapshot:journaled", "snapshot:frozen", "snapshot:chmod", "snapshot:overlay-created", "snapshot:renamed", "snapshot:committed",
		"restore:journaled", "restore:overlay-created", "restore:renamed", "restore:committed", "restore:garbage-deleted",
		"clone:journaled", "clone:frozen", "clone:chmod", "clone:overlay-created", "clone:renamed", "clone:clone-created", "clone:clone-renamed", "clone:committed",
		"clone-shared:journaled", "clone-shared:clone-created", "clone-shared:clone-renamed", "clone-shared:committed",
		"remove:committed", "remove:garbage-deleted",
		"remove-snapshot:committed", "remove-snapshot:garbage-deleted",
		"import:journaled", "import:copied", "import:renamed", "import:committed",
		"import-snapshot:journaled", "import-snapshot:copied", "import-snapshot:renamed", "import-snapshot:committed",
	}
}

func (s *Store) crashPoint(op, step string) {
	if s.crash != nil && op != "" {
		s.crash(op + ":" + step)
	}
}

// Info implements sdk.Plugin. The sdk adds Snapshots, Clone, Resize,
// Export and Import from the interfaces Store implements; constant-time
// clones and snapshot export and import are properties only the plugin can
// declare.
func (s *Store) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:         "qcow2",
		Version:      Version,
		Description:  "qcow2 copy-on-write disks with snapshots and constant-time clones (pure Go)",
		Capabilities: sdk.Capabilities{CloneO1: true, SnapshotTransfer: true},
	}, nil
}

// configBlock is the plugin's HCL config block.
type configBlock struct {
	ClusterSize    *string `hcl:"cluster_size,optional"`
	MaxVirtualSize *string `hcl:"max_virtual_size,optional"`
	Mkfs           *string `hcl:"mkfs,optional"`
}

// Configure implements sdk.Plugin: it validates the config block, prepares
// the state directory, and finishes or rolls back every operation a dead
// process left unfinished. The sdk calls it once per process, however many
// roles Store serves; a Store used without the sdk may be configured again
// (it applies the new config and recovers again).
func (s *Store) Configure(ctx context.Context, cfg *sdk.Config) error {
	var blk configBlock
	if err := cfg.Decode(&blk); err != nil {
		return err
	}
	set := &settings{
		clusterSize:    qcow2.DefaultClusterSize,
		maxVirtualSize: qcow2.DefaultMaxVirtualSize,
	}
	if blk.ClusterSize != nil {
		v, err := parseSize(*blk.ClusterSize)
		if err != nil || v < 512 || v > 2<<20 || v&(v-1) != 0 {
			return sdk.ConfigError(attrRange(cfg, "cluster_size"), "Invalid cluster_size",
				fmt.Sprintf("cluster_size = %q is not a power of two from 512B to 2MiB; the default is \"64KiB\".", *blk.ClusterSize))
		}
		set.clusterSize = int(v)
	}
	if blk.MaxVirtualSize != nil {
		v, err := parseSize(*blk.MaxVirtualSize)
		if err != nil || v < minDiskSize || v > 1<<56 {
			return sdk.ConfigError(attrRange(cfg, "max_virtual_size"), "Invalid max_virtual_size",
				fmt.Sprintf("max_virtual_size = %q is not a size from 1MiB to 64PiB, like \"16TiB\".", *blk.MaxVirtualSize))
		}
		set.maxVirtualSize = v
	}
	if blk.Mkfs != nil {
		if err := checkExecutable(*blk.Mkfs); err != nil {
			return sdk.ConfigError(attrRange(cfg, "mkfs"), "Invalid mkfs",
				fmt.Sprintf("mkfs = %q: %v. Give the absolute path of e2fsprogs' mkfs.ext4.", *blk.Mkfs, err))
		}
		set.mkfs = *blk.Mkfs
	} else {
		set.mkfs = findMkfs()
	}
	if cfg.StateDir == "" {
		return fmt.Errorf("qcow2 storage: no state directory given: %w", sdk.ErrInvalidArgument)
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return fmt.Errorf("qcow2 storage: state directory %s: %w", cfg.StateDir, err)
	}
	set.dir = dir
	for _, d := range []string{dirDisks, dirBases, dirBlank, filepath.Join(dirLocks, "disks"), filepath.Join(dirLocks, "blank")} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return fmt.Errorf("qcow2 storage: create %s: %w", filepath.Join(dir, d), err)
		}
	}
	set.db = newMetaDB(dir, s.dbTimeout)
	if err := set.db.init(ctx); err != nil {
		return err
	}
	if err := s.recoverAll(ctx, set); err != nil {
		return fmt.Errorf("qcow2 storage: recover unfinished operations in %s: %w", dir, err)
	}
	if err := s.sweep(ctx, set); err != nil {
		return fmt.Errorf("qcow2 storage: clean up %s: %w", dir, err)
	}
	s.mu.Lock()
	s.cfg = set
	s.mu.Unlock()
	return nil
}

func (s *Store) settings() (*settings, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg == nil {
		return nil, fmt.Errorf("qcow2 storage is not configured (Configure was not called): %w", sdk.ErrInvalidState)
	}
	return s.cfg, nil
}

// attrRange returns the range of attribute name in the config block, or the
// block itself.
func attrRange(cfg *sdk.Config, name string) *hcl.Range {
	file, diags := hclsyntax.ParseConfig(cfg.Body, cfg.Filename, cfg.BodyStart)
	if !diags.HasErrors() {
		if body, ok := file.Body.(*hclsyntax.Body); ok {
			if a, ok := body.Attributes[name]; ok {
				r := a.Expr.Range()
				return &r
			}
		}
	}
	return cfg.BodyRange()
}

func checkExecutable(path string) error {
	if !filepath.IsAbs(path) {
		return errors.New("not an absolute path")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

// findMkfs looks for mkfs.ext4 in $PATH and the usual sbin directories
// (which are often not in a user's $PATH).
func findMkfs() string {
	if p, err := exec.LookPath("mkfs.ext4"); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
	}
	for _, p := range []string{"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4", "/usr/local/sbin/mkfs.ext4"} {
		if checkExecutable(p) == nil {
			return p
		}
	}
	return ""
}

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"PiB", 1 << 50},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// parseSize parses "64KiB", "16TiB", "10G" or a plain byte count, the
// units boxctl's own config uses.
func parseSize(s string) (uint64, error) {
	in := strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(in, u.suffix) {
			mult, in = u.mult, strings.TrimSpace(strings.TrimSuffix(in, u.suffix))
			break
		}
	}
	n, err := strconv.ParseUint(in, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: use a whole number with a unit, like 64KiB or 16TiB", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}

// heldLocks are disk locks held by one operation.
type heldLocks struct {
	cfg   *settings
	locks map[string]*lockfile.Lock
}

func diskLockPath(cfg *settings, id string) string {
	return cfg.path(filepath.Join(dirLocks, "disks", id+".lock"))
}

func blankLockPath(cfg *settings, size uint64) string {
	return cfg.path(filepath.Join(dirLocks, "blank", strconv.FormatUint(size, 10)+".lock"))
}

func (h *heldLocks) release() {
	if h == nil {
		return
	}
	for _, l := range h.locks {
		l.Release()
	}
	h.locks = nil
}

// removeLock deletes the lock file of a disk that no longer exists.
func (h *heldLocks) removeLock(id string) {
	if l, ok := h.locks[id]; ok {
		l.Remove()
		delete(h.locks, id)
	}
}

// acquire takes the locks of ids in sorted order (so operations locking
// several disks never deadlock).
func (s *Store) acquire(ctx context.Context, cfg *settings, ids []string, shared bool) (*heldLocks, error) {
	sort.Strings(ids)
	lctx, cancel := context.WithTimeout(ctx, s.lockTimeout)
	defer cancel()
	h := &heldLocks{cfg: cfg, locks: map[string]*lockfile.Lock{}}
	for _, id := range ids {
		l, err := lockfile.Acquire(lctx, diskLockPath(cfg, id), shared)
		if err != nil {
			h.release()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("disk %s is busy: another operation on it is still running: %w (%v)", id, sdk.ErrInvalidState, err)
		}
		h.locks[id] = l
	}
	return h, nil
}

// lockDisks takes the locks of ids (shared for readers) and first recovers
// every unfinished operation on those disks: holding a disk's lock proves
// the process that journaled an operation on it is gone. An operation on
// several disks is recovered with all of their locks held.
func (s *Store) lockDisks(ctx context.Context, cfg *settings, ids []string, shared bool) (*heldLocks, error) {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for range 1000 {
		h, err := s.acquire(ctx, cfg, keys(want), shared)
		if err != nil {
			return nil, err
		}
		var touching []*intent
		err = cfg.db.view(ctx, func(t *tx) error {
			all, err := t.intents()
			for _, in := range all {
				if in.touches(want) {
					touching = append(touching, in)
				}
			}
			return err
		})
		if err != nil {
			h.release()
			return nil, err
		}
		if len(touching) == 0 {
			return h, nil
		}
		grew := false
		for _, in := range touching {
			for _, d := range in.Disks {
				if !want[d] {
					want[d], grew = true, true
				}
			}
		}
		if grew || shared {
			h.release()
			if !grew {
				hx, err := s.acquire(ctx, cfg, keys(want), false)
				if err != nil {
					return nil, err
				}
				err = s.recoverIntents(ctx, cfg, touching)
				hx.release()
				if err != nil {
					return nil, err
				}
			}
			continue
		}
		if err := s.recoverIntents(ctx, cfg, touching); err != nil {
			h.release()
			return nil, err
		}
		return h, nil
	}
	return nil, fmt.Errorf("lock disks %v: the journal keeps changing: %w", ids, sdk.ErrInvalidState)
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkDiskID validates a disk ID from the core.
func checkDiskID(what, id string) error {
	if !diskIDPattern.MatchString(id) {
		return fmt.Errorf("%s %q is not a valid disk ID ([a-z0-9][a-z0-9_.-]{0,127}): %w", what, id, sdk.ErrInvalidArgument)
	}
	return nil
}

// checkSnapshotName validates a snapshot name (it is only ever metadata).
func checkSnapshotName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("snapshot name %q must be 1 to 255 bytes: %w", name, sdk.ErrInvalidArgument)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("snapshot name %q contains a control character: %w", name, sdk.ErrInvalidArgument)
		}
	}
	return nil
}

package core

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/boxstatus"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/pluginhost"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/internal/proc"
)

// DefaultShutdownTimeout is how long Shutdown waits for each box by default.
const DefaultShutdownTimeout = 10 * time.Second

// Runtime counters, persisted in the state store and shared by all
// processes on a home.
const (
	CounterBoxesCreated     = "boxes_created"
	CounterBoxesFailed      = "boxes_failed"
	CounterBoxesStopped     = boxstatus.CounterBoxesStopped
	CounterCommandsExecuted = "commands_executed"
	CounterExecErrors       = "exec_errors"
)

// Runtime manages the boxes of one home directory.
type Runtime struct {
	cfg        *config.Config
	paths      layout
	store      *state.Store
	plugins    Plugins
	log        hclog.Logger
	logOut     io.Writer
	self       proc.Ident
	monitorBin string
	pluginDirs []string
	lockWait   time.Duration
	noRecovery bool
	crashAt    string

	mu       sync.Mutex
	shutdown bool
	monitors sync.WaitGroup
	agents   agentPool
	resolved imageMemo
}

// Option configures Open.
type Option func(*Runtime)

// WithCrashPoint is a test hook: the process exits with status 99, as if
// killed, when an operation reaches the step named point ("<op>:<step>",
// see CrashPoints). Never use it otherwise.
func WithCrashPoint(point string) Option { return func(r *Runtime) { r.crashAt = point } }

// CrashPoints are the steps WithCrashPoint can name: where a multi-step
// operation on boxes can be interrupted.
func CrashPoints() []string {
	return []string{
		"snapshot:pending", "snapshot:frozen", "snapshot:paused", "snapshot:stored", "snapshot:switched",
		"clone:records", "clone:frozen", "clone:paused", "clone:disks", "clone:switched",
		"checkpoint:pending", "checkpoint:paused", "checkpoint:disks", "checkpoint:saved",
		"suspend:pending", "suspend:paused", "suspend:saved",
		"fork:records", "fork:paused", "fork:disks", "fork:saved", "fork:cloned", "fork:started",
	}
}

// crashPoint exits the process at the step WithCrashPoint names.
func (r *Runtime) crashPoint(op, step string) {
	if r.crashAt != "" && r.crashAt == op+":"+step {
		r.log.Error("crashing on purpose (test hook)", "point", r.crashAt)
		os.Exit(99)
	}
}

// WithConfig sets the configuration (default: config.Load("")).
func WithConfig(cfg *config.Config) Option { return func(r *Runtime) { r.cfg = cfg } }

// WithHome overrides the configuration's home directory.
func WithHome(home string) Option {
	return func(r *Runtime) { r.paths.home = home }
}

// WithLogger sets the logger and where plugin log lines are written.
func WithLogger(l hclog.Logger, out io.Writer) Option {
	return func(r *Runtime) { r.log, r.logOut = l, out }
}

// WithMonitorBinary sets the boxctl binary used to run box monitors
// (default: boxctl next to the running executable, else on $PATH).
func WithMonitorBinary(path string) Option { return func(r *Runtime) { r.monitorBin = path } }

// WithPluginDirs replaces the directories searched for plugin binaries.
func WithPluginDirs(dirs ...string) Option { return func(r *Runtime) { r.pluginDirs = dirs } }

// WithoutRecovery opens the runtime without repairing the home (see
// Runtime's recovery rules): for a box's monitor, which records its own
// box's exit and auto-removal only.
func WithoutRecovery() Option { return func(r *Runtime) { r.noRecovery = true } }

// WithLockTimeout bounds how long an operation waits for a box that another
// process is starting, stopping or removing (default 2 minutes).
func WithLockTimeout(d time.Duration) Option { return func(r *Runtime) { r.lockWait = d } }

// Open opens the runtime on its home directory and runs recovery.
func Open(ctx context.Context, opts ...Option) (*Runtime, error) {
	r := &Runtime{lockWait: 2 * time.Minute}
	for _, o := range opts {
		o(r)
	}
	if r.cfg == nil {
		cfg, err := config.Load("")
		if err != nil {
			return nil, err
		}
		r.cfg = cfg
	}
	if r.paths.home != "" {
		r.cfg.Home = r.paths.home
	}
	home, err := filepath.Abs(r.cfg.Home)
	if err != nil {
		return nil, fmt.Errorf("home %s: %w", r.cfg.Home, err)
	}
	r.cfg.Home = home
	r.paths = layout{home: home}
	if err := r.paths.checkSocketPaths(); err != nil {
		return nil, err
	}
	if r.log == nil {
		r.log = hclog.NewNullLogger()
	}
	if r.logOut == nil {
		r.logOut = io.Discard
	}
	for _, dir := range []string{r.paths.boxesDir(), filepath.Dir(r.paths.lockPath("x"))} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create home %s: %w", home, err)
		}
	}
	if err := r.paths.checkOwnership(); err != nil {
		return nil, err
	}
	if r.self, err = proc.Self(); err != nil {
		return nil, err
	}
	if r.store, err = state.Open(ctx, home); err != nil {
		return nil, err
	}
	hostOpts := []pluginhost.Option{pluginhost.WithLogger(r.log.Named("plugin"), r.logOut)}
	if r.pluginDirs == nil {
		// Plugins are installed next to boxctl: an embedding program that
		// names (or finds) the boxctl binary for its monitors finds them
		// there, then next to itself, then in <home>/plugins.
		if bin, err := r.findMonitorBinary(); err == nil {
			r.pluginDirs = pluginSearchDirs(filepath.Dir(bin), home)
		}
	}
	if r.pluginDirs != nil {
		hostOpts = append(hostOpts, pluginhost.WithSearchDirs(r.pluginDirs...))
	}
	// Plugins of a boxctl that was killed can leave their sockets behind.
	pluginhost.SweepSocketDirs(home)
	if r.plugins == nil {
		r.plugins = pluginhost.New(r.cfg, hostOpts...)
	}
	if r.noRecovery {
		return r, nil
	}
	if err := r.recover(ctx); err != nil {
		r.plugins.Close()
		return nil, fmt.Errorf("recover state in %s: %w", home, err)
	}
	return r, nil
}

// Config returns the runtime's effective configuration.
func (r *Runtime) Config() *config.Config { return r.cfg }

// Home returns the home directory.
func (r *Runtime) Home() string { return r.paths.home }

func (r *Runtime) checkOpen() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shutdown {
		return ErrShutDown
	}
	return nil
}

// ShutdownResult reports what Shutdown did.
type ShutdownResult struct {
	Stopped []string
	// Failed maps box IDs to why they could not be stopped in time.
	Failed map[string]error
}

// Shutdown stops every non-detached box this process started, concurrently,
// each within timeout (0 means DefaultShutdownTimeout, negative waits
// forever), and refuses new work afterwards. Detached boxes keep running.
// Calling it again is harmless.
func (r *Runtime) Shutdown(ctx context.Context, timeout time.Duration) (ShutdownResult, error) {
	r.mu.Lock()
	r.shutdown = true
	r.mu.Unlock()
	res := ShutdownResult{Failed: map[string]error{}}
	if timeout == 0 {
		timeout = DefaultShutdownTimeout
	}
	var owned []*model.Box
	err := r.store.View(ctx, func(tx *state.Tx) error {
		boxes, err := tx.AttentionBoxes()
		for _, b := range boxes {
			if b.Status.Active() && b.Run != nil && !b.Run.Detached && b.Run.Owner == r.self {
				owned = append(owned, b)
			}
		}
		return err
	})
	if err != nil {
		return res, err
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, b := range owned {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx := ctx
			if timeout > 0 {
				var cancel context.CancelFunc
				// The stop escalates at timeout; leave it room to force.
				sctx, cancel = context.WithTimeout(ctx, timeout+15*time.Second)
				defer cancel()
			}
			stopTimeout := timeout
			if timeout < 0 {
				stopTimeout = 24 * time.Hour
			}
			err := r.stop(sctx, b.ID, stopTimeout)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed[b.ID] = err
			} else {
				res.Stopped = append(res.Stopped, b.ID)
			}
		}()
	}
	wg.Wait()
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("shutdown: %d of %d boxes failed to stop", len(res.Failed), len(owned))
	}
	return res, nil
}

// Close shuts the runtime down (see Shutdown) and stops its plugins.
func (r *Runtime) Close() error {
	_, err := r.Shutdown(context.Background(), 0)
	starts, calls := r.plugins.Counts()
	r.log.Debug("runtime closed", "plugin_starts", starts, "plugin_calls", calls, "state_transactions", r.store.Transactions())
	r.plugins.Close()
	r.agents.closeAll()
	return err
}

// Metrics are the runtime counters, shared by every process on the home.
type Metrics struct {
	BoxesCreated     uint64 `json:"boxes_created"`
	BoxesFailed      uint64 `json:"boxes_failed"`
	BoxesStopped     uint64 `json:"boxes_stopped"`
	CommandsExecuted uint64 `json:"commands_executed"`
	ExecErrors       uint64 `json:"exec_errors"`
}

// Metrics returns the runtime counters.
func (r *Runtime) Metrics(ctx context.Context) (Metrics, error) {
	var m Metrics
	err := r.store.View(ctx, func(tx *state.Tx) error {
		c := tx.Counters()
		m = Metrics{
			BoxesCreated:     c[CounterBoxesCreated],
			BoxesFailed:      c[CounterBoxesFailed],
			BoxesStopped:     c[CounterBoxesStopped],
			CommandsExecuted: c[CounterCommandsExecuted],
			ExecErrors:       c[CounterExecErrors],
		}
		return nil
	})
	return m, err
}

// count adds one to each named counter, in one transaction.
func (r *Runtime) count(ctx context.Context, names ...string) {
	err := r.store.Update(ctx, func(tx *state.Tx) error {
		for _, n := range names {
			if err := tx.AddCounter(n, 1); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		r.log.Warn("update counters", "counters", names, "error", err)
	}
}

// lockAndLoad resolves ref, takes the box's lifecycle lock and reads its
// current record (which may have changed while waiting for the lock).
func (r *Runtime) lockAndLoad(ctx context.Context, ref string) (*model.Box, *lockfile.Lock, error) {
	info, err := r.GetInfo(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	lock, b, err := r.lockBox(ctx, info.ID)
	if err != nil {
		return nil, nil, err
	}
	return b, lock, nil
}

// lockBox takes the per-box lifecycle lock and returns the box's record as
// it is under the lock. The lock file is made with the box and deleted
// with it, so a box removed meanwhile is ErrNotFound.
func (r *Runtime) lockBox(ctx context.Context, id string) (*lockfile.Lock, *model.Box, error) {
	lctx, cancel := context.WithTimeout(ctx, r.lockWait)
	defer cancel()
	path := r.paths.lockPath(id)
	l, err := lockfile.AcquireExisting(lctx, path, false)
	if errors.Is(err, fs.ErrNotExist) {
		// A box whose lock file was lost (say, by hand) gets a new one.
		if _, gerr := r.reload(ctx, id); gerr != nil {
			return nil, nil, gerr
		}
		l, err = lockfile.Acquire(lctx, path, false)
	}
	if errors.Is(err, lockfile.ErrRemoved) {
		return nil, nil, fmt.Errorf("box %s was removed: %w", shortID(id), ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("box %s is busy with another operation (start, stop or remove in another boxctl): %w", shortID(id), err)
	}
	// The box may have been removed while we waited; then the lock file
	// (perhaps one we just made) must not outlive it.
	b, err := r.reload(ctx, id)
	if errors.Is(err, ErrNotFound) {
		_ = l.Remove()
		return nil, nil, fmt.Errorf("box %s was removed: %w", shortID(id), ErrNotFound)
	}
	if err != nil {
		_ = l.Release()
		return nil, nil, err
	}
	return l, b, nil
}

// pluginSearchDirs are where plugin binaries are looked for: binDir (where
// boxctl is), the running executable's directory, <home>/plugins.
func pluginSearchDirs(binDir, home string) []string {
	dirs := []string{binDir}
	if exe, err := os.Executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		if d := filepath.Dir(exe); d != binDir {
			dirs = append(dirs, d)
		}
	}
	return append(dirs, filepath.Join(home, "plugins"))
}

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // the kernel's RNG does not fail
	}
	return hex.EncodeToString(b[:])
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func (r *Runtime) findMonitorBinary() (string, error) {
	if r.monitorBin != "" {
		return r.monitorBin, nil
	}
	if exe, err := os.Executable(); err == nil {
		if filepath.Base(exe) == "boxctl" {
			return exe, nil
		}
		cand := filepath.Join(filepath.Dir(exe), "boxctl")
		if _, err := os.Stat(cand); err == nil {
			return cand, nil
		}
	}
	if p, err := exec.LookPath("boxctl"); err == nil {
		return p, nil
	}
	return "", errors.New("cannot find the boxctl binary to run the box monitor: install boxctl on $PATH or pass core.WithMonitorBinary")
}

// CheckConsistency verifies the home: the store's indexes, and that every
// box has its directory and every directory and lock file its box. It
// returns the problems found, none when consistent. It changes nothing.
func (r *Runtime) CheckConsistency(ctx context.Context) ([]string, error) {
	var problems []string
	var ids map[string]bool
	err := r.store.View(ctx, func(tx *state.Tx) error {
		problems = tx.Check()
		ids = tx.BoxIDs()
		return nil
	})
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(r.paths.boxesDir())
	if err != nil {
		return nil, err
	}
	dirs := map[string]bool{}
	for _, e := range entries {
		dirs[e.Name()] = true
		if !ids[e.Name()] {
			problems = append(problems, fmt.Sprintf("directory boxes/%s has no box record", e.Name()))
		}
	}
	for id := range ids {
		if !dirs[id] {
			problems = append(problems, fmt.Sprintf("box %s has no directory", id))
		}
	}
	locks, _ := os.ReadDir(filepath.Dir(r.paths.lockPath("x")))
	for _, e := range locks {
		id := strings.TrimSuffix(e.Name(), ".lock")
		if !ids[id] {
			problems = append(problems, fmt.Sprintf("lock file locks/%s belongs to no box", e.Name()))
		}
	}
	return problems, nil
}

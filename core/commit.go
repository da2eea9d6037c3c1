package core

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/sdk"
)

// CommitOptions describe the image Commit makes.
type CommitOptions struct {
	// Comment and Author go into the new image's history (Author also into
	// its config), as `docker commit -m/-a`.
	Comment, Author string
	// Config, if set, overrides the new image's config: each field set (a
	// non-empty list or string) replaces what the base image and the box's
	// own settings give.
	Config *sdk.ImageConfig
}

// commitLease is the guest's freeze lease during a commit's diff; the
// bracket renews it while the diff streams, so it bounds how long a guest
// stays frozen after boxctl died, not how long a diff may take.
const commitLease = 10 * time.Second

// minDiffAgent is the guest agent protocol with Diff and freeze leases.
const minDiffAgent = 2

// Commit makes a new image of a box's changes against its image: the box's
// writable layer, as an OCI layer (whiteouts for deletions), on top of the
// image the box runs, tagged image (name[:tag]) in the image cache and
// runnable like any other. As with `docker commit`, the box's own settings
// (command, entrypoint, environment, working directory, user, labels)
// become the new image's defaults.
//
// A running box is frozen while its changes are read (the guest's writers
// wait; a freeze lease the guest releases by itself bounds it even if this
// process dies) and keeps running. A stopped or never-started box is booted
// for the diff, without running its command, and stopped again. Not for
// boxes that remove themselves when they stop (start them and commit while
// they run), paused boxes (unpause first), or boxes that are starting or
// stopping.
func (r *Runtime) Commit(ctx context.Context, ref, image string, opts CommitOptions) (sdk.Image, error) {
	if err := r.checkOpen(); err != nil {
		return sdk.Image{}, err
	}
	if image == "" {
		return sdk.Image{}, fmt.Errorf("commit: no image name: give NAME[:TAG], e.g. myapp:v2: %w", ErrInvalidArgument)
	}
	images, err := r.committer(ctx)
	if err != nil {
		return sdk.Image{}, err
	}
	b, err := r.GetInfo(ctx, ref)
	if err != nil {
		return sdk.Image{}, err
	}
	running := b.Status == model.StatusRunning && r.runAlive(ctx, b)
	switch {
	case b.Status == model.StatusPaused:
		return sdk.Image{}, fmt.Errorf("commit %s: %w", b.Name, pausedError(b))
	case running:
	case b.Status.Active():
		return sdk.Image{}, fmt.Errorf("commit %s: the box is %s; commit it once it runs or has stopped: %w", b.Name, b.Status, ErrInvalidState)
	case b.Config.AutoRemove:
		return sdk.Image{}, fmt.Errorf("commit %s: the box is %s and removes itself when it stops (--rm), so it cannot be booted for the commit; start it and commit it while it runs: %w",
			b.Name, b.Status, ErrInvalidState)
	default:
		stop, err := r.maintenanceBoot(ctx, b)
		if err != nil {
			return sdk.Image{}, err
		}
		defer stop()
	}

	layer, done, err := r.commitTempFile()
	if err != nil {
		return sdk.Image{}, err
	}
	defer done()
	b, err = r.diffBox(ctx, b.ID, layer)
	if err != nil {
		return sdk.Image{}, err
	}
	base, err := images.GetImage(ctx, b.ImageDigest)
	if err != nil {
		return sdk.Image{}, fmt.Errorf("commit %s: its image %s: %w", b.Name, b.ImageDigest, err)
	}
	img, err := images.Commit(ctx, sdk.CommitRequest{
		Base:      b.ImageDigest,
		LayerPath: layer.Name(),
		Reference: image,
		Config:    commitConfig(b, base.Config, opts.Config),
		Comment:   opts.Comment,
		Author:    opts.Author,
	})
	if err != nil {
		return sdk.Image{}, fmt.Errorf("commit %s as %s: %w", b.Name, image, err)
	}
	r.resolved.forget()
	return img, nil
}

// Push uploads a cached image, named by its registry reference, to that
// registry (credentials and insecure registries as for pulls) and returns
// the pushed manifest digest. progress may be nil.
func (r *Runtime) Push(ctx context.Context, ref string, progress func(sdk.PullEvent)) (string, error) {
	if err := r.checkOpen(); err != nil {
		return "", err
	}
	info, err := r.plugins.Info(ctx, sdk.RoleImages)
	if err != nil {
		return "", fmt.Errorf("image plugin: %w", err)
	}
	if !info.Capabilities.Push {
		return "", fmt.Errorf("the %s image plugin (%q) cannot push images: %w", info.Name, r.cfg.Images, ErrUnsupported)
	}
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return "", fmt.Errorf("image plugin: %w", err)
	}
	d, err := images.Push(ctx, sdk.PushRequest{Reference: ref}, progress)
	if err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	return d, nil
}

// committer returns the image plugin when it can commit.
func (r *Runtime) committer(ctx context.Context) (sdk.ImageSourceClient, error) {
	info, err := r.plugins.Info(ctx, sdk.RoleImages)
	if err != nil {
		return nil, fmt.Errorf("image plugin: %w", err)
	}
	if !info.Capabilities.Commit {
		return nil, fmt.Errorf("the %s image plugin (%q) cannot commit images: %w", info.Name, r.cfg.Images, ErrUnsupported)
	}
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return nil, fmt.Errorf("image plugin: %w", err)
	}
	return images, nil
}

// maintenanceBoot starts a box that is not running, only to read its disk:
// tied to this process (so it stops if this process dies) and without its
// command. The returned stop stops it again, unless someone else restarted
// it meanwhile.
func (r *Runtime) maintenanceBoot(ctx context.Context, b *model.Box) (stop func(), err error) {
	if b.Status == model.StatusSuspended {
		return nil, fmt.Errorf("commit %s: the box is suspended, and booting it to read its disk would lose its saved processes: start it (boxctl start %s) and commit it running, or stop it (boxctl stop %s) to discard its saved state: %w", b.Name, b.Name, b.Name, ErrInvalidState)
	}
	r.log.Info("booting a stopped box to read its changes", "box", b.Name)
	if err := r.Start(ctx, b.ID, Detach(false)); err != nil {
		return nil, fmt.Errorf("commit %s: the box is %s and has to boot for the commit: %w", b.Name, b.Status, err)
	}
	cur, err := r.reload(ctx, b.ID)
	if err != nil {
		return nil, err
	}
	var run string
	if cur.Run != nil {
		run = cur.Run.ID
	}
	return func() {
		ctx := context.WithoutCancel(ctx)
		if now, err := r.reload(ctx, b.ID); err != nil || now.Run == nil || now.Run.ID != run {
			return
		}
		if err := r.Stop(ctx, b.ID, DefaultStopTimeout); err != nil {
			r.log.Warn("stop a box booted for a commit", "box", b.Name, "error", err)
		}
	}, nil
}

// diffBox writes a running box's changes to w inside a freeze, under the
// box's lifecycle lock, and returns the box as it was.
func (r *Runtime) diffBox(ctx context.Context, id string, w io.Writer) (*model.Box, error) {
	lock, b, err := r.lockBox(ctx, id)
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	if b.Status != model.StatusRunning || b.Run == nil || b.Run.AgentSocket == "" {
		return nil, fmt.Errorf("commit %s: the box is %s, not running: %w", b.Name, b.Status, ErrInvalidState)
	}
	if b.ImageDigest == "" {
		return nil, fmt.Errorf("commit %s: the box has no image digest recorded: %w", b.Name, ErrInvalidState)
	}
	watch := r.watchRun(ctx, b)
	defer watch.stop()
	ctx = watch.ctx
	c, err := r.agents.get(ctx, b.Run.AgentSocket)
	if err != nil {
		return nil, fmt.Errorf("commit %s: reach the guest agent: %w", b.Name, err)
	}
	info, err := c.Ping(ctx)
	if err != nil {
		return nil, watch.err(fmt.Errorf("commit %s: %w", b.Name, err))
	}
	if info.ProtocolVersion < minDiffAgent {
		return nil, fmt.Errorf("commit %s: its guest agent (%s, protocol %d) cannot take a diff (protocol %d+ can): rebuild the guest (make guest) and restart the box: %w",
			b.Name, info.AgentVersion, info.ProtocolVersion, minDiffAgent, ErrUnsupported)
	}
	limit := diffLimit(b, r.cfg.Defaults.DiskSize)
	var n int64
	frozen, err := r.withFrozen(ctx, b, c, func(ctx context.Context) error {
		var err error
		n, err = c.Diff(ctx, &limitWriter{w: w, left: limit})
		return err
	})
	if err != nil {
		if errors.Is(err, errDiffTooLarge) {
			return nil, fmt.Errorf("commit %s: its changes exceed %d bytes (twice its disk size; sparse files count in full): %w", b.Name, limit, ErrInvalidArgument)
		}
		if status.Code(err) == codes.FailedPrecondition {
			return nil, fmt.Errorf("commit %s: %w: %w", b.Name, err, ErrInvalidState)
		}
		return nil, watch.err(fmt.Errorf("commit %s: %w", b.Name, err))
	}
	r.log.Info("box changes read for a commit", "box", b.Name, "bytes", n, "frozen", frozen)
	return b, nil
}

// withFrozen runs fn with the box's writable filesystem frozen: the guest
// agent syncs and freezes it (Quiesce, with a lease renewed while fn runs),
// and Thaw always follows, also when fn fails or ctx ends. If this process
// dies in between, the guest thaws by itself when the lease ends. It
// returns how long the guest says it was frozen.
//
// TODO(lead): the shared quiesce bracket (freeze, pause, disk work, resume,
// thaw) replaces this.
func (r *Runtime) withFrozen(ctx context.Context, b *model.Box, c *agentclient.Client, fn func(ctx context.Context) error) (frozen time.Duration, err error) {
	if _, err := c.Quiesce(ctx, commitLease); err != nil {
		return 0, fmt.Errorf("freeze the box's filesystem: %w", err)
	}
	renewCtx, stopRenew := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(commitLease / 3)
		defer t.Stop()
		for {
			select {
			case <-renewCtx.Done():
				return
			case <-t.C:
				if _, err := c.Quiesce(renewCtx, commitLease); err != nil && renewCtx.Err() == nil {
					r.log.Warn("renew the freeze lease", "box", b.Name, "error", err)
				}
			}
		}
	}()
	defer func() {
		stopRenew()
		wg.Wait()
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		th, terr := c.Thaw(tctx)
		frozen = th.Frozen
		switch {
		case terr != nil:
			err = errors.Join(err, fmt.Errorf("thaw the box's filesystem (the guest thaws by itself within %s): %w", commitLease, terr))
		case th.LeaseExpired && err == nil:
			err = fmt.Errorf("the guest's freeze lease ran out after %s, before the work was done, so the box may have changed meanwhile: try again: %w", th.Frozen, ErrInvalidState)
		}
	}()
	return 0, fn(ctx)
}

// commitConfig is what the new image's config takes from the box: its
// overrides of the image's settings, as `docker commit` keeps a container's.
// over (CommitOptions.Config) wins. nil when nothing changes.
func commitConfig(b *model.Box, img sdk.ImageConfig, over *sdk.ImageConfig) *sdk.ImageConfig {
	c := &sdk.ImageConfig{
		Entrypoint: b.Config.Entrypoint,
		Cmd:        b.Config.Cmd,
		WorkingDir: b.Config.WorkingDir,
		User:       b.Config.User,
	}
	if len(b.Config.Env) > 0 {
		c.Env = mergeEnv(img.Env, b.Config.Env)
	}
	if len(b.Config.Labels) > 0 {
		c.Labels = maps.Clone(img.Labels)
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		maps.Copy(c.Labels, b.Config.Labels)
	}
	if o := over; o != nil {
		for _, f := range []struct{ dst, src *[]string }{{&c.Entrypoint, &o.Entrypoint}, {&c.Cmd, &o.Cmd}, {&c.Env, &o.Env}, {&c.ExposedPorts, &o.ExposedPorts}} {
			if len(*f.src) > 0 {
				*f.dst = *f.src
			}
		}
		for _, f := range []struct{ dst, src *string }{{&c.WorkingDir, &o.WorkingDir}, {&c.User, &o.User}, {&c.StopSignal, &o.StopSignal}} {
			if *f.src != "" {
				*f.dst = *f.src
			}
		}
		if len(o.Labels) > 0 {
			c.Labels = o.Labels
		}
	}
	if len(c.Entrypoint)+len(c.Cmd)+len(c.Env)+len(c.ExposedPorts)+len(c.Labels) == 0 && c.WorkingDir == "" && c.User == "" && c.StopSignal == "" {
		return nil
	}
	return c
}

// diffLimit bounds what a guest may send as its changes: twice its disk
// (tar headers, hard links and sparse files take more than the data), at
// least 1 GiB more. The guest is not trusted to stop.
func diffLimit(b *model.Box, defaultDisk uint64) int64 {
	disk := b.Config.DiskSize
	if disk == 0 {
		disk = defaultDisk
	}
	return int64(min(disk, 1<<50))*2 + 1<<30
}

var errDiffTooLarge = errors.New("diff larger than its limit")

// limitWriter fails writes beyond left bytes.
type limitWriter struct {
	w    io.Writer
	left int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		return 0, errDiffTooLarge
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}

// commitTempFile makes the file a commit's diff is written to, in the home
// (the image plugin reads it from there), locked so that a sweep by another
// process leaves it alone; done removes it. Files of commits whose process
// died are swept first.
func (r *Runtime) commitTempFile() (f *os.File, done func(), err error) {
	dir := filepath.Join(r.paths.home, "tmp")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("commit: %w", err)
	}
	sweepCommitFiles(dir)
	f, err = os.CreateTemp(dir, commitFilePattern)
	if err != nil {
		return nil, nil, fmt.Errorf("commit: %w", err)
	}
	lock, ok, err := lockfile.TryAcquire(f.Name(), false)
	if err != nil || !ok {
		f.Close()
		os.Remove(f.Name())
		return nil, nil, fmt.Errorf("commit: lock %s: %v", f.Name(), err)
	}
	return f, func() {
		f.Close()
		if err := lock.Remove(); err != nil {
			r.log.Warn("remove a commit's temporary file", "path", f.Name(), "error", err)
		}
	}, nil
}

const commitFilePattern = "commit-*.tar"

// sweepCommitFiles removes the temporary files of commits whose process is
// gone (their lock is free). Young files are left alone: their commit may
// be between creating and locking them.
func sweepCommitFiles(dir string) {
	names, _ := filepath.Glob(filepath.Join(dir, commitFilePattern))
	for _, p := range names {
		fi, err := os.Stat(p)
		if err != nil || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		if l, ok, err := lockfile.TryAcquire(p, false); err == nil && ok {
			_ = l.Remove()
		}
	}
}

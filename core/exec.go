package core

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/guest/tarsafe"
	"github.com/boxctl/boxctl/sdk"
)

// TermSize is a terminal size.
type TermSize = agentclient.Size

// ExecOptions describe a command to run in a box.
type ExecOptions struct {
	// Argv is the command. Empty means the box's default command (its
	// entrypoint and cmd, from the box or the image).
	Argv []string
	// Env (KEY=VALUE) is added to the image's and the box's environment.
	Env []string
	// WorkingDir and User override the box's and the image's.
	WorkingDir string
	User       string
	// TTY runs the command on a terminal of this size; stdout and stderr
	// are then one stream.
	TTY *TermSize
	// Stdin is copied to the command until EOF; nil gives it no input.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Resize carries terminal size changes; Signals carries signal numbers
	// to deliver to the command.
	Resize  <-chan TermSize
	Signals <-chan int
	// Timeout kills the command after this long; zero means none.
	Timeout time.Duration
	// Detach runs the command in the background: Exec returns once it has
	// started (ExecResult.PID), its output goes to the box's console log,
	// and it keeps running. It excludes TTY, Stdin and Timeout.
	Detach bool
}

// ExecResult is how a command ended.
type ExecResult = agentclient.ExitResult

// Exec runs a command in the box and returns its exit status. A box that
// is not running is started first (the first exec starts a configured box).
// Exec streams never pass through plugins: the command's I/O goes straight
// over the guest agent's socket.
func (r *Runtime) Exec(ctx context.Context, ref string, opts ExecOptions) (ExecResult, error) {
	b, err := r.runningBox(ctx, ref)
	if err != nil {
		return ExecResult{}, err
	}
	req, err := execRequest(b, opts)
	if err != nil {
		return ExecResult{}, err
	}
	w := r.watchRun(ctx, b)
	defer w.stop()
	opts.Signals = r.forwardSignals(w, b, opts.Signals)
	res, err := r.execRaw(w.ctx, b, req, opts)
	err = w.err(err)
	counters := []string{CounterCommandsExecuted, boxCommandsCounter(b.ID)}
	if err != nil {
		counters = []string{CounterExecErrors}
	}
	r.count(context.WithoutCancel(ctx), counters...)
	return res, err
}

func (r *Runtime) execRaw(ctx context.Context, b *model.Box, req agentclient.ExecRequest, opts ExecOptions) (ExecResult, error) {
	for attempt := 0; ; attempt++ {
		c, err := r.agents.get(ctx, b.Run.AgentSocket)
		if err != nil {
			return ExecResult{}, fmt.Errorf("exec in %s: reach the guest agent: %w", b.Name, err)
		}
		res, err := c.Exec(ctx, req, opts.Stdin, opts.Stdout, opts.Stderr, opts.Resize, opts.Signals)
		if err == nil {
			return res, nil
		}
		// A cached connection may have gone stale (the box restarted).
		// Retrying is safe only if the command never started.
		if attempt == 0 && res.PID == 0 && status.Code(err) == codes.Unavailable && opts.Stdin == nil {
			r.agents.drop(b.Run.AgentSocket, c)
			continue
		}
		return res, fmt.Errorf("exec in %s: %w", b.Name, err)
	}
}

// runningBox returns the box's record, starting it if it is not running.
func (r *Runtime) runningBox(ctx context.Context, ref string) (*model.Box, error) {
	b, err := r.GetInfo(ctx, ref)
	if err != nil {
		return nil, err
	}
	if b.Status != model.StatusRunning || !r.runAlive(ctx, b) {
		if b.Status == model.StatusPaused {
			return nil, pausedError(b)
		}
		if err := r.Start(ctx, b.ID); err != nil {
			return nil, err
		}
		if b, err = r.reload(ctx, b.ID); err != nil {
			return nil, err
		}
	}
	if b.Run == nil || b.Run.AgentSocket == "" {
		return nil, fmt.Errorf("box %s has no guest agent (its VMM runs no guest): %w", b.Name, ErrInvalidState)
	}
	return b, nil
}

// execRequest merges the image's defaults, the box's settings and the
// call's options.
func execRequest(b *model.Box, opts ExecOptions) (agentclient.ExecRequest, error) {
	img := b.Image
	if img == nil {
		img = &model.ImageConfig{}
	}
	argv := opts.Argv
	if len(argv) == 0 {
		argv = DefaultCommand(b)
	}
	if len(argv) == 0 {
		return agentclient.ExecRequest{}, fmt.Errorf("box %s: no command given and the image has no entrypoint or cmd: %w", b.Name, ErrInvalidArgument)
	}
	env := mergeEnv(img.Env, b.Config.Env, opts.Env)
	wd := firstNonEmpty(opts.WorkingDir, b.Config.WorkingDir, img.WorkingDir)
	user := firstNonEmpty(opts.User, b.Config.User, img.User)
	if opts.Timeout < 0 {
		return agentclient.ExecRequest{}, fmt.Errorf("exec timeout %s is negative (zero means none): %w", opts.Timeout, ErrInvalidArgument)
	}
	if opts.Detach && (opts.TTY != nil || opts.Stdin != nil || opts.Timeout != 0) {
		return agentclient.ExecRequest{}, fmt.Errorf("a detached command cannot have a terminal, stdin or a timeout: %w", ErrInvalidArgument)
	}
	return agentclient.ExecRequest{Argv: argv, Env: env, WorkingDir: wd, User: user, TTY: opts.TTY, Timeout: opts.Timeout, Detach: opts.Detach}, nil
}

// DefaultCommand is what `run` executes: the entrypoint (the box's, else
// the image's) followed by the cmd (the box's, else the image's — unless
// the box overrides the entrypoint, which drops the image's cmd, as Docker
// does).
func DefaultCommand(b *model.Box) []string {
	img := b.Image
	if img == nil {
		img = &model.ImageConfig{}
	}
	entry := img.Entrypoint
	cmd := img.Cmd
	if b.Config.Entrypoint != nil {
		entry = b.Config.Entrypoint
		cmd = nil
	}
	if b.Config.Cmd != nil {
		cmd = b.Config.Cmd
	}
	return append(append([]string{}, entry...), cmd...)
}

func mergeEnv(layers ...[]string) []string {
	idx := map[string]int{}
	var out []string
	for _, layer := range layers {
		for _, kv := range layer {
			k, _, _ := strings.Cut(kv, "=")
			if i, ok := idx[k]; ok {
				out[i] = kv
				continue
			}
			idx[k] = len(out)
			out = append(out, kv)
		}
	}
	return out
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// errCopyEnded stops the producing side of a copy when the consuming side
// has finished or failed; the consumer's error is the one to report.
var errCopyEnded = errors.New("the other side of the copy ended")

// CopyOptions tune CopyIn and CopyOut.
type CopyOptions struct {
	// FollowSymlinks copies what symlinks point to.
	FollowSymlinks bool
	// NoOverwrite refuses to replace existing files.
	NoOverwrite bool
	// Archive keeps the owners (uid/gid) the files have at the source, as
	// `docker cp -a` does. Otherwise files copied out belong to the calling
	// user and files copied in to the box's root. Copying out with Archive
	// needs root on the host.
	Archive bool
	// UnsafeSpecialFiles (copies out only) creates the box's device nodes
	// and FIFOs on the host and keeps setuid/setgid bits. Without it they
	// are skipped (reported to OnSkip) and the bits are cleared: a box can
	// mknod a world-writable node for any host device or hand out a
	// setuid-root program. Creating device nodes needs root.
	UnsafeSpecialFiles bool
	// OnSkip is called for each entry a copy out leaves out.
	OnSkip func(CopySkipped)
}

// CopySkipped is a file a copy out of a box left out, and what it was.
type CopySkipped = tarsafe.Skipped

// errEmptyBoxPath refuses "BOX:" with nothing after the colon, which
// would otherwise mean the box's whole root, /proc and /sys included.
func errEmptyBoxPath(box string) error {
	return fmt.Errorf("empty path in the box: write %s:/PATH (to copy the box's whole root filesystem, say %s:/ explicitly): %w", box, box, ErrInvalidArgument)
}

// CopyIn copies the host path src into the box directory dest (created if
// missing). A directory is copied with its name; end src with "/." to copy
// only its contents.
func (r *Runtime) CopyIn(ctx context.Context, ref, src, dest string, opts CopyOptions) (err error) {
	if dest == "" {
		return errEmptyBoxPath(ref)
	}
	if opts.UnsafeSpecialFiles {
		return fmt.Errorf("copy %s into %s: the unsafe special-files option applies to copies out of a box only (copies in always keep device files and set-id bits): %w", src, ref, ErrInvalidArgument)
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	return r.withAgent(ctx, ref, "copy into", func(ctx context.Context, b *model.Box, c *agentclient.Client) error {
		if _, err := os.Lstat(abs); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		return copyIn(ctx, c, b, abs, src, dest, opts)
	})
}

func copyIn(ctx context.Context, c *agentclient.Client, b *model.Box, abs, src, dest string, opts CopyOptions) error {
	contentsOnly := strings.HasSuffix(src, "/.")
	pr, pw := io.Pipe()
	archiveErr := make(chan error, 1)
	go func() {
		err := tarsafe.Archive(ctx, pw, "/", abs, tarsafe.ArchiveOptions{FollowSymlinks: opts.FollowSymlinks, IncludeParent: !contentsOnly})
		pw.CloseWithError(err)
		archiveErr <- err
	}()
	_, err := c.Upload(ctx, dest, pr, agentclient.UploadOptions{Overwrite: !opts.NoOverwrite, PreserveOwner: opts.Archive})
	pr.CloseWithError(errCopyEnded)
	aerr := <-archiveErr
	if aerr != nil && !errors.Is(aerr, errCopyEnded) {
		return fmt.Errorf("copy %s: %w", src, aerr)
	}
	if err != nil {
		if agentclient.IsEscape(err) {
			return fmt.Errorf("copy %s into %s:%s: refused: %w", src, b.Name, dest, err)
		}
		return fmt.Errorf("copy %s into %s:%s: %w", src, b.Name, dest, err)
	}
	return nil
}

// CopyOut copies the box path src into the host directory dest (created if
// missing). The box is not trusted: the tar it sends is extracted so that
// nothing is written outside dest, whatever names and symlinks it holds;
// device nodes and FIFOs are left out (each reported to opts.OnSkip) and
// setuid/setgid bits cleared unless opts.UnsafeSpecialFiles; files belong
// to the caller unless opts.Archive. Runs of zeros become holes, so sparse
// files stay sparse.
func (r *Runtime) CopyOut(ctx context.Context, ref, src, dest string, opts CopyOptions) (err error) {
	if src == "" {
		return errEmptyBoxPath(ref)
	}
	return r.withAgent(ctx, ref, "copy out of", func(ctx context.Context, b *model.Box, c *agentclient.Client) error {
		return copyOut(ctx, c, b, src, dest, opts)
	})
}

func copyOut(ctx context.Context, c *agentclient.Client, b *model.Box, src, dest string, opts CopyOptions) (err error) {
	contentsOnly := strings.HasSuffix(src, "/.")
	pr, pw := io.Pipe()
	dlErr := make(chan error, 1)
	go func() {
		err := c.Download(ctx, path.Clean("/"+src), pw, agentclient.DownloadOptions{FollowSymlinks: opts.FollowSymlinks, IncludeParent: !contentsOnly})
		pw.CloseWithError(err)
		dlErr <- err
	}()
	_, err = tarsafe.Extract(ctx, pr, dest, tarsafe.ExtractOptions{
		Overwrite:        !opts.NoOverwrite,
		PreserveOwner:    opts.Archive,
		SkipSpecialFiles: !opts.UnsafeSpecialFiles,
		ClearSetID:       !opts.UnsafeSpecialFiles,
		OnSkip:           opts.OnSkip,
	})
	pr.CloseWithError(errCopyEnded)
	derr := <-dlErr
	if derr != nil && !errors.Is(derr, errCopyEnded) {
		if agentclient.IsNotFound(derr) {
			return fmt.Errorf("copy %s:%s: no such file or directory in the box: %w", b.Name, src, ErrNotFound)
		}
		return fmt.Errorf("copy %s:%s: %w", b.Name, src, derr)
	}
	if err != nil {
		return fmt.Errorf("copy %s:%s to %s: %w", b.Name, src, dest, err)
	}
	return nil
}

// withAgent runs fn with a connection to the guest agent of running box
// ref (started first if it is not), watching the run so that fn's context
// ends, and its error says so, when the box stops meanwhile.
func (r *Runtime) withAgent(ctx context.Context, ref, what string, fn func(ctx context.Context, b *model.Box, c *agentclient.Client) error) (err error) {
	b, err := r.runningBox(ctx, ref)
	if err != nil {
		return err
	}
	w := r.watchRun(ctx, b)
	defer func() { err = w.err(err); w.stop() }()
	c, err := agentclient.Dial(w.ctx, b.Run.AgentSocket)
	if err != nil {
		return fmt.Errorf("%s %s: reach the guest agent: %w", what, b.Name, err)
	}
	defer c.Close()
	return fn(w.ctx, b, c)
}

// Stats is a box's resource use.
type Stats struct {
	Box   *model.Box
	Guest *agentclient.Stats
	VM    *sdk.Metrics
	// CommandsExecuted counts the commands run in this box.
	CommandsExecuted uint64
}

// Stats reports a running box's resource use: from the guest agent and
// from the VMM.
func (r *Runtime) Stats(ctx context.Context, ref string) (*Stats, error) {
	b, err := r.GetInfo(ctx, ref)
	if err != nil {
		return nil, err
	}
	if b.Status != model.StatusRunning || b.Run == nil {
		return nil, fmt.Errorf("box %s is %s: %w", b.Name, b.Status, ErrInvalidState)
	}
	st := &Stats{Box: b}
	// A guest that stops answering (paused by the hypervisor, wedged) must
	// not hang `boxctl stats`.
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	if b.Run.AgentSocket != "" {
		c, err := agentclient.Dial(ctx, b.Run.AgentSocket)
		if err == nil {
			st.Guest, err = c.Stats(ctx)
			c.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", b.Name, err)
		}
	}
	if vmm, err := r.vmmOf(ctx, b); err == nil && vmm.info.Capabilities.Metrics {
		if m, err := vmm.Metrics(ctx, vmRef(b.Run)); err == nil {
			st.VM = &m
		}
	}
	_ = r.store.View(ctx, func(tx *state.Tx) error {
		st.CommandsExecuted = tx.Counter(boxCommandsCounter(b.ID))
		return nil
	})
	return st, nil
}

// statsTimeout bounds one Stats call.
const statsTimeout = 10 * time.Second

// ConsoleLog returns the path of the box's console log.
func (r *Runtime) ConsoleLog(ctx context.Context, ref string) (string, error) {
	b, err := r.GetInfo(ctx, ref)
	if err != nil {
		return "", err
	}
	if b.Run != nil && b.Run.ConsoleLog != "" {
		return b.Run.ConsoleLog, nil
	}
	return r.paths.consoleLog(b.ID), nil
}

// boxCommandsCounter names the per-box command counter; DeleteBox drops it
// with the box.
func boxCommandsCounter(id string) string { return state.BoxCounterPrefix(id) + "commands" }

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/sdk"
)

// healthFlags set a box's health check.
type healthFlags struct {
	cmd         string
	interval    time.Duration
	timeout     time.Duration
	retries     int
	startPeriod time.Duration
}

func (h *healthFlags) register(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&h.cmd, "health-cmd", "", "command run in the box (by /bin/sh -c) to check its health; exit 0 = healthy")
	fl.DurationVar(&h.interval, "health-interval", 30*time.Second, "time between health checks")
	fl.DurationVar(&h.timeout, "health-timeout", 30*time.Second, "how long one health check may run")
	fl.IntVar(&h.retries, "health-retries", 3, "consecutive failures that make the box unhealthy")
	fl.DurationVar(&h.startPeriod, "health-start-period", 0, "time after start during which failures do not count")
}

func (h *healthFlags) apply(c *model.BoxConfig) {
	if h.cmd == "" {
		return
	}
	c.Health = &model.HealthCheck{Cmd: []string{"/bin/sh", "-c", h.cmd}, Interval: h.interval, Timeout: h.timeout, Retries: h.retries, StartPeriod: h.startPeriod}
}

// ioFlags are -i and -t.
type ioFlags struct {
	interactive bool
	tty         bool
}

func (f *ioFlags) register(c *cobra.Command) {
	c.Flags().BoolVarP(&f.interactive, "interactive", "i", false, "keep stdin open and stream it to the command")
	c.Flags().BoolVarP(&f.tty, "tty", "t", false, "run the command on a terminal (raw mode here, resize follows this terminal)")
}

func (a *app) runCommand() *cobra.Command {
	var f boxFlags
	var h healthFlags
	var io ioFlags
	var detach, cold bool
	c := &cobra.Command{
		Use:   "run [flags] IMAGE [-- COMMAND [ARG...]]",
		Short: "Create a box from an image, start it and run a command in it",
		Long: `Create a box, boot its VM and run the command (default: the image's
entrypoint and cmd). The exit code of the command is boxctl's exit code
(128+N when it was killed by signal N).

Without -d the box lives as long as this command: it is stopped when the
command ends, when you press Ctrl-C, or if boxctl itself is killed (and
removed with --rm). With -d the box keeps running in the background, the
command runs detached in it (its output goes to 'boxctl logs') and the box's
ID is printed.`,
		Example: `  boxctl run --rm alpine -- uname -a
  boxctl run -it --rm alpine -- sh
  echo hello | boxctl run -i --rm alpine -- cat
  boxctl run -d --name web --memory 1GiB alpine`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			opts, err := f.options(cmd, args[0], args[1:], lookupEnv)
			if err != nil {
				return err
			}
			opts.Config.Detach = detach
			h.apply(&opts.Config)
			if io.tty && !term.IsTerminal(int(os.Stdin.Fd())) {
				return errors.New("-t: the input device is not a terminal; drop -t (and keep -i to pipe input)")
			}
			rt, err := a.runtime(ctx)
			if err != nil {
				return err
			}
			// run needs every plugin: start them side by side now rather
			// than one after the other as each step first needs it.
			rt.Prestart(ctx, sdk.RoleImages, sdk.RoleVMM, sdk.RoleDisks)
			if err := a.ensureImage(ctx, rt, opts.Config.Image, opts.Config.Platform); err != nil {
				return err
			}
			box, err := rt.Create(ctx, opts)
			if err != nil {
				return err
			}
			startOpts := []core.StartOption{core.Detach(detach)}
			if cold {
				startOpts = append(startOpts, core.Cold())
			}
			if err := rt.Start(ctx, box.ID(), startOpts...); err != nil {
				return err // a --rm box that cannot start is removed by the runtime
			}
			if detach {
				// The box's command runs in the background; its output
				// goes to `boxctl logs`.
				info, err := rt.GetInfo(ctx, box.ID())
				if err != nil {
					return err
				}
				if len(core.DefaultCommand(info)) > 0 {
					if _, err := rt.Exec(ctx, box.ID(), core.ExecOptions{Detach: true}); err != nil {
						return err
					}
				}
				fmt.Fprintln(a.stdout, box.ID())
				return nil
			}
			// The box stops (and with --rm goes away) when this process
			// closes the runtime, whatever happens below.
			code, err := a.execInteractive(ctx, rt, box.ID(), core.ExecOptions{}, io)
			if opts.Config.AutoRemove {
				// Its disk is about to be deleted: no clean shutdown
				// needed. The runtime removes it once it is stopped.
				if serr := rt.Stop(context.WithoutCancel(ctx), box.ID(), 0); serr != nil && err == nil {
					err = serr
				}
			}
			if err != nil {
				return err
			}
			return exitWith(code)
		},
	}
	f.register(c)
	h.register(c)
	io.register(c)
	c.Flags().BoolVarP(&detach, "detach", "d", false, "run the box in the background and print its ID")
	c.Flags().BoolVar(&cold, "cold", false, "boot the kernel even if a boot template of the image exists (and make none)")
	return c
}

func exitWith(code int) error {
	if code == 0 {
		return nil
	}
	return exitError{code: code}
}

func (a *app) execCommand() *cobra.Command {
	var io ioFlags
	var env []string
	var workdir, user string
	var timeout time.Duration
	var detach bool
	c := &cobra.Command{
		Use:   "exec [flags] BOX -- COMMAND [ARG...]",
		Short: "Run a command in a box",
		Long: `Run a command in a box. A box that is not running is started (detached)
first. The command's exit code is boxctl's exit code (128+N when it was
killed by signal N). Ctrl-C is forwarded to the command.`,
		Example: `  boxctl exec web -- ls -l /
  boxctl exec -it web -- sh
  tar c dir | boxctl exec -i web -- tar x -C /srv`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if timeout < 0 {
				return fmt.Errorf("--timeout %s: the timeout cannot be negative (0, the default, means none)", timeout)
			}
			if io.tty && !term.IsTerminal(int(os.Stdin.Fd())) {
				return errors.New("-t: the input device is not a terminal; drop -t (and keep -i to pipe input)")
			}
			rt, err := a.runtime(ctx)
			if err != nil {
				return err
			}
			b, err := rt.GetInfo(ctx, args[0])
			if err != nil {
				return err
			}
			if !b.Status.Active() {
				if err := rt.Start(ctx, b.ID, core.Detach(true)); err != nil {
					return err
				}
			}
			var envs []string
			for _, e := range env {
				if !strings.Contains(e, "=") {
					if v, ok := os.LookupEnv(e); ok {
						envs = append(envs, e+"="+v)
					}
					continue
				}
				envs = append(envs, e)
			}
			opts := core.ExecOptions{Argv: args[1:], Env: envs, WorkingDir: workdir, User: user, Timeout: timeout}
			if detach {
				if io.tty || io.interactive || timeout != 0 {
					return errors.New("-d runs the command in the background: it cannot be combined with -i, -t or --timeout")
				}
				opts.Detach = true
				res, err := rt.Exec(ctx, b.ID, opts)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%d\n", res.PID)
				return nil
			}
			code, err := a.execInteractive(ctx, rt, b.ID, opts, io)
			if err != nil {
				return err
			}
			return exitWith(code)
		},
	}
	io.register(c)
	c.Flags().StringArrayVarP(&env, "env", "e", nil, "set an environment variable (KEY=VALUE, or KEY to copy it from here); repeatable")
	c.Flags().StringVarP(&workdir, "workdir", "w", "", "working directory (default: the box's)")
	c.Flags().StringVarP(&user, "user", "u", "", "user: name, uid, or uid:gid (default: the box's)")
	c.Flags().DurationVar(&timeout, "timeout", 0, "kill the command after this long (e.g. 30s); 0 means never")
	c.Flags().BoolVarP(&detach, "detach", "d", false, "run the command in the background (output goes to 'boxctl logs') and print its PID in the box")
	return c
}

// execInteractive runs a command with this process's terminal: raw mode and
// resize with -t, stdin with -i, signals forwarded.
func (a *app) execInteractive(ctx context.Context, rt *core.Runtime, id string, opts core.ExecOptions, f ioFlags) (int, error) {
	opts.Stdout, opts.Stderr = a.stdout, a.stderr
	if f.interactive {
		opts.Stdin = os.Stdin
	}
	// Interrupts go to the command, not to boxctl: stop the signal
	// context from cancelling the exec.
	ctx = context.WithoutCancel(ctx)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	forward := make(chan int, 4)
	opts.Signals = forward
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case s := <-sigs:
				if n, ok := s.(syscall.Signal); ok {
					select {
					case forward <- int(n):
					default:
					}
				}
			case <-done:
				return
			}
		}
	}()
	if f.tty {
		fd := int(os.Stdin.Fd())
		cols, rows, err := term.GetSize(fd)
		if err != nil {
			cols, rows = 80, 24
		}
		opts.TTY = &core.TermSize{Rows: uint16(rows), Cols: uint16(cols)}
		old, err := term.MakeRaw(fd)
		if err != nil {
			return 0, fmt.Errorf("-t: put the terminal in raw mode: %w", err)
		}
		defer func() { _ = term.Restore(fd, old) }()
		resize := make(chan core.TermSize, 1)
		opts.Resize = resize
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for {
				select {
				case <-winch:
					if c, r, err := term.GetSize(fd); err == nil {
						select {
						case resize <- core.TermSize{Rows: uint16(r), Cols: uint16(c)}:
						default:
						}
					}
				case <-done:
					return
				}
			}
		}()
		if f.interactive {
			// A terminal read blocks forever; hand the command a reader
			// that Exec can abandon when the command ends.
			opts.Stdin = io.NopCloser(os.Stdin)
		}
	}
	res, err := rt.Exec(ctx, id, opts)
	if err != nil {
		return 0, err
	}
	return res.ExitCode, nil
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// boxFlags are the settings shared by create and run.
type boxFlags struct {
	name       string
	env        []string
	workdir    string
	user       string
	cpus       int
	memory     string
	diskSize   string
	entrypoint string
	autoRemove bool
	labels     []string
	platform   string
	publish    []string
	// allowHostLoopback opens the host's loopback and own addresses to the box.
	allowHostLoopback bool
	// network is the network mode; allowNet the egress allow-list.
	network  string
	allowNet []string
	volumes  []string
}

func (f *boxFlags) register(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&f.name, "name", "", "name of the box (default: generated)")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable (KEY=VALUE, or KEY to copy it from here); repeatable")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working directory inside the box (default: the image's)")
	fl.StringVarP(&f.user, "user", "u", "", "user inside the box: name, uid, or uid:gid (default: the image's)")
	fl.IntVar(&f.cpus, "cpus", 0, "number of vCPUs, 1-256 (default from the config: 1)")
	fl.StringVar(&f.memory, "memory", "", "memory, at least 64MiB, e.g. 512MiB or 2GiB; rounded down to whole MiB (default from the config: 512MiB)")
	fl.StringVar(&f.diskSize, "disk-size", "", "size of the writable disk, 64MiB to 16TiB, e.g. 10GiB (default from the config)")
	fl.StringVar(&f.entrypoint, "entrypoint", "", `override the image's entrypoint (this drops the image's cmd; "" clears the entrypoint)`)
	fl.BoolVar(&f.autoRemove, "rm", false, "remove the box when it stops")
	fl.StringArrayVarP(&f.labels, "label", "l", nil, "set a label (KEY=VALUE); repeatable")
	fl.StringVar(&f.platform, "platform", "", "image platform, e.g. linux/arm64 (default: this host's)")
	fl.StringArrayVarP(&f.publish, "publish", "p", nil, "forward a host port to the box: [HOSTIP:]HOSTPORT:BOXPORT[/tcp|udp]; repeatable")
	fl.StringArrayVarP(&f.volumes, "volume", "v", nil, "mount a host directory (HOSTDIR:/PATH[:ro], HOSTDIR absolute or ./relative) or a named volume (NAME:/PATH[:ro]) in the box; repeatable (see docs/volumes.md)")
	fl.BoolVar(&f.allowHostLoopback, "allow-host-loopback", false, "let the box reach services on the host's loopback (as 10.0.2.2) and on the host's own addresses (default: blocked; see docs/networking.md)")
	fl.StringVar(&f.network, "network", "", `network mode: "user" (outbound through the host) or "none" (no network device) (default from the config: user)`)
	fl.StringArrayVar(&f.allowNet, "allow-net", nil, "reach only these destinations: HOST[:PORT] or CIDR[:PORT] (names resolved by the host; everything else, other DNS servers included, is refused); repeatable")
}

// options turns the flags into box options. cmd is the command after the
// image: none (nil or empty) keeps the image's cmd. Flags that are set are
// checked here, so that an explicit 0 is refused rather than taken for
// "the default".
func (f *boxFlags) options(cc *cobra.Command, image string, cmd []string, lookupEnv func(string) (string, bool)) (core.BoxOptions, error) {
	fl := cc.Flags()
	c := model.BoxConfig{
		Image:             image,
		WorkingDir:        f.workdir,
		User:              f.user,
		CPUs:              f.cpus,
		AutoRemove:        f.autoRemove,
		Platform:          f.platform,
		AllowHostLoopback: f.allowHostLoopback,
		NetworkMode:       f.network,
		AllowNet:          f.allowNet,
	}
	if len(cmd) > 0 {
		// nil, not empty, when no command is given: an empty Cmd would
		// override the image's cmd with nothing.
		c.Cmd = cmd
	}
	if fl.Changed("cpus") && (f.cpus < 1 || f.cpus > 256) {
		return core.BoxOptions{}, fmt.Errorf("--cpus %d: a box needs between 1 and 256 vCPUs", f.cpus)
	}
	for _, e := range f.env {
		if !strings.Contains(e, "=") {
			v, ok := lookupEnv(e)
			if !ok {
				continue // Docker skips unset variables named without a value
			}
			e = e + "=" + v
		}
		c.Env = append(c.Env, e)
	}
	if fl.Changed("entrypoint") {
		// As Docker: --entrypoint "" clears the image's entrypoint (and,
		// like any --entrypoint, its cmd).
		c.Entrypoint = []string{}
		if f.entrypoint != "" {
			c.Entrypoint = []string{f.entrypoint}
		}
	}
	if fl.Changed("memory") {
		n, err := config.ParseSize(f.memory)
		if err == nil {
			err = config.CheckMemory(n)
		}
		if err != nil {
			return core.BoxOptions{}, fmt.Errorf("--memory %s: %w", f.memory, err)
		}
		c.MemoryMiB = n >> 20
	}
	if fl.Changed("disk-size") {
		n, err := config.ParseSize(f.diskSize)
		if err == nil {
			err = config.CheckDiskSize(n)
		}
		if err != nil {
			return core.BoxOptions{}, fmt.Errorf("--disk-size %s: %w", f.diskSize, err)
		}
		c.DiskSize = n
	}
	for _, p := range f.publish {
		pm, err := parsePublish(p)
		if err != nil {
			return core.BoxOptions{}, err
		}
		c.Ports = append(c.Ports, pm)
	}
	for _, v := range f.volumes {
		m, err := core.ParseMount(v)
		if err != nil {
			return core.BoxOptions{}, fmt.Errorf("-v %s: %w", v, err)
		}
		c.Mounts = append(c.Mounts, m)
	}
	if len(f.labels) > 0 {
		c.Labels = map[string]string{}
		for _, l := range f.labels {
			k, v, _ := strings.Cut(l, "=")
			if k == "" {
				return core.BoxOptions{}, fmt.Errorf("--label %q: use KEY=VALUE", l)
			}
			c.Labels[k] = v
		}
	}
	return core.BoxOptions{Name: f.name, Config: c}, nil
}

func (a *app) createCommand() *cobra.Command {
	var f boxFlags
	var h healthFlags
	c := &cobra.Command{
		Use:   "create [flags] IMAGE [-- COMMAND [ARG...]]",
		Short: "Create a box without starting it",
		Long: `Create a box from an image and print its ID. The box is recorded with
status "configured"; its VM starts with 'boxctl start' (or the first exec).`,
		Example: `  boxctl create --name web alpine
  boxctl create --name job --memory 1GiB -e MODE=batch alpine -- sh -c 'echo hi'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := f.options(cmd, args[0], args[1:], lookupEnv)
			if err != nil {
				return err
			}
			h.apply(&opts.Config)
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			box, err := rt.Create(cmd.Context(), opts)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, box.ID())
			return nil
		},
	}
	f.register(c)
	h.register(c)
	return c
}

func (a *app) startCommand() *cobra.Command {
	var cold bool
	c := &cobra.Command{
		Use:   "start BOX [BOX...]",
		Short: "Start one or more boxes (detached); resume suspended ones",
		Long: `Start boxes by ID, name or ID prefix. The boxes keep running after this
command exits, until 'boxctl stop'. Starting a running box does nothing. A
suspended box (boxctl suspend) resumes with every process as it was. A new
box starts from its image's boot template when there is one (--cold boots).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			opts := []core.StartOption{core.Detach(true)}
			if cold {
				opts = append(opts, core.Cold())
			}
			return forEachBox(args, func(ref string) error {
				if err := rt.Start(cmd.Context(), ref, opts...); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, ref)
				return nil
			})
		},
	}
	c.Flags().BoolVar(&cold, "cold", false, "boot new boxes' kernels even if a boot template exists (and make none)")
	return c
}

func (a *app) stopCommand() *cobra.Command {
	var seconds int
	c := &cobra.Command{
		Use:   "stop [-t SECONDS] BOX [BOX...]",
		Short: "Stop one or more boxes",
		Long: `Ask each box's guest to power off cleanly; after the timeout the VM is
forced off. Stopping a stopped box does nothing. Stopping a suspended box
discards its saved memory: it boots afresh at the next start. Boxes created
with --rm are removed once stopped.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if seconds < 0 {
				return fmt.Errorf("-t %d: the timeout cannot be negative", seconds)
			}
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			return forEachBox(args, func(ref string) error {
				if err := rt.Stop(cmd.Context(), ref, time.Duration(seconds)*time.Second); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, ref)
				return nil
			})
		},
	}
	c.Flags().IntVarP(&seconds, "time", "t", int(core.DefaultStopTimeout/time.Second), "seconds to wait for a clean power-off before forcing the VM off")
	return c
}

func (a *app) rmCommand() *cobra.Command {
	var force, all bool
	c := &cobra.Command{
		Use:     "rm [-f] BOX [BOX...] | rm -a [-f]",
		Aliases: []string{"remove"},
		Short:   "Remove boxes",
		Long: `Remove boxes with their disks and snapshots. A running box is refused
unless -f (which kills it); so is a box that clones were made from.
With -a, every box is removed (running ones only with -f).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return errors.New("give box names or IDs, or -a for all boxes (not both)")
			}
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			if all {
				boxes, err := rt.List(cmd.Context())
				if err != nil {
					return err
				}
				for _, b := range boxes {
					args = append(args, b.ID)
				}
			}
			return forEachBox(args, func(ref string) error {
				if err := rt.Remove(cmd.Context(), ref, core.RemoveOptions{Force: force}); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, ref)
				return nil
			})
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "kill running boxes and ignore clones that depend on them")
	c.Flags().BoolVarP(&all, "all", "a", false, "remove every box")
	return c
}

// forEachBox runs fn for each reference, reporting every failure and
// failing if any did (as `docker stop a b` does).
func forEachBox(refs []string, fn func(string) error) error {
	var errs []error
	for _, ref := range refs {
		if err := fn(ref); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (a *app) lsCommand() *cobra.Command {
	var all, quiet bool
	var format string
	c := &cobra.Command{
		Use:     "ls [-a] [-q] [--format table|json|TEMPLATE]",
		Aliases: []string{"ps", "list"},
		Short:   "List boxes, newest first",
		Long: `List boxes, newest first. Without -a only active boxes are shown.

--format takes "table" (default), "json", or a Go template applied to each
box, for example '{{.Name}} {{.Status}}'. Template fields: .ID, .ShortID,
.Name, .Image, .Status, .State (human status), .Created, .CreatedAt, .Config,
.Run, .Error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			list := rt.ListActive
			if all {
				list = rt.List
			}
			shown, err := list(cmd.Context())
			if err != nil {
				return err
			}
			if quiet {
				w := bufio.NewWriter(a.stdout)
				for _, b := range shown {
					fmt.Fprintln(w, b.ShortID())
				}
				return w.Flush()
			}
			return printBoxes(a.stdout, shown, format, time.Now())
		},
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "show every box, not only active ones")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only box IDs")
	c.Flags().StringVar(&format, "format", "table", `output format: "table", "json", or a Go template`)
	return c
}

func (a *app) inspectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect BOX [BOX...]",
		Short: "Show boxes' full records as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			var out []*model.Box
			err = forEachBox(args, func(ref string) error {
				b, err := rt.GetInfo(cmd.Context(), ref)
				if err == nil {
					out = append(out, b)
				}
				return err
			})
			if len(out) > 0 {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				if eerr := enc.Encode(out); eerr != nil {
					return eerr
				}
			}
			return err
		},
	}
}

func (a *app) pauseCommands() []*cobra.Command {
	mk := func(use, short string, fn func(*core.Runtime) func(context.Context, string) error) *cobra.Command {
		return &cobra.Command{
			Use:   use + " BOX [BOX...]",
			Short: short,
			Args:  cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				rt, err := a.runtime(cmd.Context())
				if err != nil {
					return err
				}
				op := fn(rt)
				return forEachBox(args, func(ref string) error {
					if err := op(cmd.Context(), ref); err != nil {
						return err
					}
					fmt.Fprintln(a.stdout, ref)
					return nil
				})
			},
		}
	}
	return []*cobra.Command{
		mk("pause", "Freeze a box's vCPUs (its commands stop making progress)", func(rt *core.Runtime) func(context.Context, string) error { return rt.Pause }),
		mk("unpause", "Resume a paused box", func(rt *core.Runtime) func(context.Context, string) error { return rt.Resume }),
	}
}

// parsePublish parses -p [HOSTIP:]HOSTPORT:BOXPORT[/tcp|udp].
func parsePublish(s string) (model.PortMapping, error) {
	pm, err := core.ParsePort(s)
	if err != nil {
		return model.PortMapping{}, fmt.Errorf("-p %w", err)
	}
	return pm, nil
}

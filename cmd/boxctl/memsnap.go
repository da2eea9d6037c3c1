package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
)

func (a *app) checkpointCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "checkpoint BOX [NAME] | checkpoint ls|rm|restore ...",
		Short: "Save a running box's memory and disk at one instant; list, restore, remove",
		Long: `A checkpoint is a running box's memory (every process, the page cache) and its
writable disk at one instant. The box keeps running: its vCPUs stop for the
time its memory takes to write (about a second per few hundred MiB in use
under TCG); its disk state is an O(1) clone. Restoring a checkpoint starts the
box from that instant, every process where it was.

A checkpoint depends on the guest kernel, initramfs, VMM and its version,
vCPUs and memory it was taken with (listed by 'checkpoint ls'); it is not
restored once any of them changed.

  boxctl checkpoint web before-deploy       # take one (same as: checkpoint create)
  boxctl checkpoint ls web
  boxctl checkpoint restore web before-deploy   # the box must be stopped (or --force)
  boxctl checkpoint rm web before-deploy`,
		Args: cobra.RangeArgs(0, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return a.createCheckpoint(cmd, args)
		},
	}
	create := &cobra.Command{
		Use:     "create BOX [NAME]",
		Short:   "Checkpoint a running box (default name: ckpt-DATE-TIME)",
		Example: "  boxctl checkpoint create web\n  boxctl checkpoint create web before-deploy",
		Args:    cobra.RangeArgs(1, 2),
		RunE:    a.createCheckpoint,
	}
	c.AddCommand(create, a.checkpointLsCommand(), a.checkpointRestoreCommand(), a.checkpointRmCommand())
	return c
}

func (a *app) createCheckpoint(cmd *cobra.Command, args []string) error {
	rt, err := a.runtime(cmd.Context())
	if err != nil {
		return err
	}
	name := ""
	if len(args) == 2 {
		name = args[1]
	}
	cp, err := rt.CreateCheckpoint(cmd.Context(), args[0], name)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stderr, "memory %s saved, vCPUs paused %s\n", config.HumanSize(uint64(cp.Size)), roundMS(cp.Paused))
	fmt.Fprintln(a.stdout, cp.Name)
	return nil
}

func (a *app) checkpointLsCommand() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:     "ls BOX",
		Aliases: []string{"list"},
		Short:   "List a box's checkpoints, oldest first",
		Long: `List BOX's checkpoints, oldest first: name, age, the size of the saved memory,
vCPUs and memory, and the inputs restoring it depends on (kernel, initramfs,
VMM and its version, ...). --format json prints them as JSON.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			list, err := rt.Checkpoints(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			now := time.Now()
			return a.writeList(format, list, "NAME\tCREATED\tSIZE\tCPUS\tMEMORY\tVMM\tINPUTS", func(w io.Writer) {
				for _, c := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", c.Name, ago(c.CreatedAt, now), config.HumanSize(uint64(c.Size)),
						c.CPUs, config.HumanSize(c.MemoryMiB<<20), c.VMM, c.Inputs)
				}
			})
		},
	}
	c.Flags().StringVar(&format, "format", "table", "output format: table or json")
	return c
}

func (a *app) checkpointRestoreCommand() *cobra.Command {
	var force bool
	var seconds int
	c := &cobra.Command{
		Use:   "restore BOX NAME",
		Short: "Start a box from a checkpoint: its disk and every process as they were",
		Long: `Bring BOX back to checkpoint NAME — its writable disk and its memory — and
start it from there: every process continues where it was when the checkpoint
was taken. What the box wrote since is discarded; the checkpoint stays. The
box must be stopped (a suspended box's saved state is discarded); --force
stops a running box first.`,
		Example: "  boxctl checkpoint restore web before-deploy\n  boxctl checkpoint restore --force web before-deploy",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			detach := true
			return rt.RestoreCheckpoint(cmd.Context(), args[0], args[1], core.RestoreCheckpointOptions{
				Force: force, StopTimeout: time.Duration(seconds) * time.Second, Detach: &detach,
			})
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "stop the box first if it is running")
	c.Flags().IntVarP(&seconds, "time", "t", int(core.DefaultStopTimeout/time.Second), "with --force: seconds to wait for a clean power-off before forcing the VM off")
	return c
}

func (a *app) checkpointRmCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm BOX NAME [NAME...]",
		Aliases: []string{"remove"},
		Short:   "Remove checkpoints of a box",
		Args:    cobra.MinimumNArgs(2),
		RunE:    a.removeEach((*core.Runtime).RemoveCheckpoint),
	}
}

func (a *app) suspendCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "suspend BOX [BOX...]",
		Short: "Save running boxes' memory and stop their VMs; 'start' resumes them",
		Long: `Save each running box's memory and devices to a file and stop its VM, freeing
its memory. The box is listed as suspended; 'boxctl start BOX' resumes it with
every process as it was (in a fraction of a boot). 'boxctl stop BOX' discards
the saved state instead (the next start boots afresh). While suspended, the
box's disk is kept as it is: a snapshot restore or commit refuses it.`,
		Example: "  boxctl suspend web\n  boxctl start web",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			return forEachBox(args, func(ref string) error {
				info, err := rt.Suspend(cmd.Context(), ref)
				if err != nil {
					return err
				}
				if info.Size > 0 {
					fmt.Fprintf(a.stderr, "%s: memory %s saved\n", ref, config.HumanSize(uint64(info.Size)))
				}
				fmt.Fprintln(a.stdout, ref)
				return nil
			})
		},
	}
}

func (a *app) forkCommand() *cobra.Command {
	var opts core.ForkOptions
	c := &cobra.Command{
		Use:   "fork BOX [--count N] [--name NAME]",
		Short: "Make new running boxes from this instant of a running box, processes included",
		Long: `Make N new running boxes from this instant of running BOX: its memory and
processes included, each fork with its own O(1) clone of BOX's writable disk.
BOX keeps running (its vCPUs stop while its memory is saved). Each fork is its
own box: its own ID and host name, its clock set, its kernel's random number
generator reseeded. With --count N the forks are named NAME-1 ... NAME-N (or
get generated names without --name). All or none: if one fork cannot start,
none is left. The forks run detached, like 'run -d'.`,
		Example: "  boxctl fork web --name web-try\n  boxctl fork worker --count 4 --name w",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Count < 1 {
				return fmt.Errorf("--count %d: make at least 1 fork (and at most 256)", opts.Count)
			}
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			detach := true
			opts.Detach = &detach
			info, err := rt.Fork(cmd.Context(), args[0], opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "memory %s saved, vCPUs paused %s\n", config.HumanSize(uint64(info.StateSize)), roundMS(info.Paused))
			var names []string
			for _, b := range info.Boxes {
				if bi, err := b.Info(cmd.Context()); err == nil {
					names = append(names, bi.Name)
				}
			}
			fmt.Fprintln(a.stdout, strings.Join(names, "\n"))
			return nil
		},
	}
	fl := c.Flags()
	fl.StringVar(&opts.Name, "name", "", "name of the fork (with --count: NAME-1 ... NAME-N)")
	fl.IntVar(&opts.Count, "count", 1, "how many forks to make, 1-256")
	return c
}

func (a *app) imageTemplatesCommand() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "templates",
		Short: "List boot templates (memory snapshots new boxes start from)",
		Long: `List the boot templates: for each image first booted with given vCPUs, memory
and disk size, the memory snapshot taken right after its guest came up. A new
box of that image starts from it instead of booting (run --cold boots
instead). A template whose inputs (kernel, initramfs, VMM version, ...)
changed is dropped at its next use; 'boxctl image prune' removes them all.
Turn templates off with defaults { boot_templates = false } in the config.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			list, err := rt.Templates(cmd.Context())
			if err != nil {
				return err
			}
			now := time.Now()
			return a.writeList(format, list, "IMAGE\tCREATED\tSIZE\tCPUS\tMEMORY\tDISK\tINPUTS", func(w io.Writer) {
				for _, t := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", t.Image, ago(t.CreatedAt, now), config.HumanSize(uint64(t.Size)),
						t.CPUs, config.HumanSize(t.MemoryMiB<<20), config.HumanSize(t.DiskSize), t.Inputs)
				}
			})
		},
	}
	c.Flags().StringVar(&format, "format", "table", "output format: table or json")
	return c
}

package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
)

func (a *app) snapshotCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "snapshot",
		Short: "Take, list, restore and remove snapshots of a box's disk",
		Long: `A snapshot is a named point-in-time state of a box's writable disk. Taking one
is constant-time whatever the disk holds; a running box keeps running (its
filesystem is frozen and its vCPUs paused for a few milliseconds while the
snapshot is taken, so the snapshot is consistent).

  boxctl snapshot create web before-upgrade
  boxctl snapshot ls web
  boxctl snapshot restore web before-upgrade     # the box must be stopped (or --force)
  boxctl snapshot rm web before-upgrade`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	c.AddCommand(a.snapshotCreateCommand(), a.snapshotLsCommand(), a.snapshotRestoreCommand(), a.snapshotRmCommand())
	return c
}

func (a *app) snapshotCreateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "create BOX [NAME]",
		Short: "Snapshot a box's disk (running or stopped)",
		Long: `Record BOX's writable disk as it is now, under NAME (default: snap-DATE-TIME).
A running box is held for the moment it takes: its guest syncs and freezes
the filesystem, the vCPUs pause, the disk's current state becomes the
snapshot and the VM continues on a new overlay; then it resumes and thaws.
The time the box was held is printed.`,
		Example: "  boxctl snapshot create web\n  boxctl snapshot create web before-upgrade",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			sn, err := rt.CreateSnapshot(cmd.Context(), args[0], name)
			if err != nil {
				return err
			}
			if sn.Quiesced != nil {
				fmt.Fprintf(a.stderr, "box held %s (filesystem frozen), vCPUs paused %s\n", roundMS(sn.Quiesced.Frozen), roundMS(sn.Quiesced.Paused))
			}
			fmt.Fprintln(a.stdout, sn.Name)
			return nil
		},
	}
}

func roundMS(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }

func (a *app) snapshotLsCommand() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:     "ls BOX",
		Aliases: []string{"list"},
		Short:   "List a box's snapshots, oldest first",
		Long: `List BOX's snapshots, oldest first: name, when it was taken, and the space it
holds of its own on the host (what was written between it and the next).
--format json prints them as JSON.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			list, err := rt.Snapshots(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if list == nil {
				list = []core.Snapshot{}
			}
			now := time.Now()
			return a.writeList(format, list, "NAME\tCREATED\tSIZE", func(w io.Writer) {
				for _, s := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\n", s.Name, ago(s.CreatedAt, now), config.HumanSize(s.Size))
				}
			})
		},
	}
	c.Flags().StringVar(&format, "format", "table", "output format: table or json")
	return c
}

func (a *app) snapshotRestoreCommand() *cobra.Command {
	var force bool
	var seconds int
	c := &cobra.Command{
		Use:   "restore BOX NAME",
		Short: "Bring a box's disk back to a snapshot",
		Long: `Bring BOX's writable disk back to snapshot NAME, discarding everything written
since. The snapshot stays, so it can be restored again. The box must be
stopped; --force stops it first (as boxctl stop -t does).`,
		Example: "  boxctl stop web && boxctl snapshot restore web before-upgrade\n  boxctl snapshot restore --force web before-upgrade",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			opts := core.RestoreOptions{Force: force, StopTimeout: time.Duration(seconds) * time.Second}
			return rt.RestoreSnapshot(cmd.Context(), args[0], args[1], opts)
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "stop the box first if it is running")
	c.Flags().IntVarP(&seconds, "time", "t", int(core.DefaultStopTimeout/time.Second), "with --force: seconds to wait for a clean power-off before forcing the VM off")
	return c
}

func (a *app) snapshotRmCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm BOX NAME [NAME...]",
		Aliases: []string{"remove"},
		Short:   "Remove snapshots of a box",
		Long: `Remove snapshots of BOX. The disk keeps its content; only the point in time is
forgotten. A snapshot that boxes were cloned from (boxctl clone --snapshot) is
refused while those boxes exist, and they are named.`,
		Args: cobra.MinimumNArgs(2),
		RunE: a.removeEach((*core.Runtime).RemoveSnapshot),
	}
}

func (a *app) cloneCommand() *cobra.Command {
	var opts core.CloneOptions
	c := &cobra.Command{
		Use:   "clone SRC [--name NAME] [--count N] [--snapshot NAME] [--start]",
		Short: "Make new boxes from a box's disk (running or stopped)",
		Long: `Make new boxes with SRC's configuration, each with its own writable disk made
from SRC's disk as it is now (or from its snapshot, with --snapshot), in
constant time whatever the disk holds. A running SRC keeps running: it is
held for a moment while its disk state is taken, as for a snapshot.

The clones start Stopped unless --start. With --count N they are named
NAME-1 ... NAME-N (or get generated names without --name). All or nothing:
if one clone fails, those already made are removed.`,
		Example: "  boxctl clone web --name web2\n  boxctl clone web --name worker --count 3 --start\n  boxctl clone web --snapshot before-upgrade --name web-old",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Count < 1 {
				return fmt.Errorf("--count %d: make at least 1 clone (and at most 256)", opts.Count)
			}
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			boxes, err := rt.CloneBoxes(cmd.Context(), args[0], opts)
			for _, b := range boxes {
				if info, ierr := b.Info(cmd.Context()); ierr == nil {
					fmt.Fprintln(a.stdout, info.Name)
				}
			}
			return err
		},
	}
	fl := c.Flags()
	fl.StringVar(&opts.Name, "name", "", "name of the clone (with --count: NAME-1 ... NAME-N)")
	fl.IntVar(&opts.Count, "count", 1, "how many clones to make, 1-256")
	fl.StringVar(&opts.Snapshot, "snapshot", "", "clone this snapshot of SRC instead of its current state")
	fl.BoolVar(&opts.Start, "start", false, "start the clones once all are made")
	return c
}

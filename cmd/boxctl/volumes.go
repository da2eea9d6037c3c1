package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
)

func (a *app) volumeCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "volume",
		Short: "Create, list, inspect and remove named volumes",
		Long: `A named volume is a disk in the store that outlives the boxes it is attached
to: attach it with -v NAME:/path/in/box[:ro] on run or create. A volume is
attached read-write to one running box at a time (read-only to any number).
See docs/volumes.md.

  boxctl volume create --size 2GiB cache
  boxctl run --rm -v cache:/var/cache alpine -- sh -c 'date >> /var/cache/log'
  boxctl volume ls
  boxctl volume rm cache`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	c.AddCommand(a.volumeCreateCommand(), a.volumeLsCommand(), a.volumeInspectCommand(), a.volumeRmCommand())
	return c
}

func (a *app) volumeCreateCommand() *cobra.Command {
	var size string
	c := &cobra.Command{
		Use:   "create [--size SIZE] NAME",
		Short: "Create an empty volume (an ext4 filesystem)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var n uint64
			if cmd.Flags().Changed("size") {
				var err error
				if n, err = config.ParseSize(size); err == nil {
					err = config.CheckDiskSize(n)
				}
				if err != nil {
					return fmt.Errorf("--size %s: %w", size, err)
				}
			}
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			v, err := rt.CreateVolume(cmd.Context(), args[0], n)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, v.Name)
			return nil
		},
	}
	c.Flags().StringVar(&size, "size", "", "size of the volume, 64MiB to 16TiB (default 1GiB)")
	return c
}

func (a *app) volumeLsCommand() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List volumes and the boxes that use them",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			list, err := rt.Volumes(cmd.Context())
			if err != nil {
				return err
			}
			if list == nil {
				list = []core.VolumeInfo{}
			}
			now := time.Now()
			return a.writeList(format, list, "NAME\tSIZE\tCREATED\tUSED BY", func(w io.Writer) {
				for _, v := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", v.Name, config.HumanSize(v.Size), ago(v.CreatedAt, now), usersOf(v))
				}
			})
		},
	}
	c.Flags().StringVar(&format, "format", "table", "output format: table or json")
	return c
}

// usersOf lists a volume's boxes, "-" for none; (ro) marks read-only
// attachments and * running boxes.
func usersOf(v core.VolumeInfo) string {
	if len(v.UsedBy) == 0 {
		return "-"
	}
	var s []string
	for _, u := range v.UsedBy {
		n := u.Box
		if u.ReadOnly {
			n += "(ro)"
		}
		if u.Running {
			n += "*"
		}
		s = append(s, n)
	}
	return strings.Join(s, ",")
}

func (a *app) volumeInspectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show a volume as JSON: size, disk file, boxes that use it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			v, err := rt.InspectVolume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			enc := json.NewEncoder(a.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(v)
		},
	}
}

func (a *app) volumeRmCommand() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "rm [-f] NAME...",
		Short: "Remove volumes and their data",
		Long: `Remove volumes and their data. A volume a box uses (running or not) is
refused; -f removes it anyway and names the boxes that lose it (the mount is
taken out of their configuration; a running box keeps the disk it has open
until it stops).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			var failed error
			for _, name := range args {
				lost, err := rt.RemoveVolume(cmd.Context(), name, force)
				for _, u := range lost {
					state := "stopped"
					if u.Running {
						state = "running: it keeps the open disk until it stops"
					}
					fmt.Fprintf(a.stderr, "box %s loses volume %s at %s (%s)\n", u.Box, name, u.Target, state)
				}
				if err != nil {
					if len(args) == 1 {
						return err
					}
					fmt.Fprintln(a.stderr, "error:", err)
					failed = err
					continue
				}
				fmt.Fprintln(a.stdout, name)
			}
			if failed != nil {
				return fmt.Errorf("some volumes were not removed")
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "remove volumes in use too (the boxes lose them)")
	return c
}

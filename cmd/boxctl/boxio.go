package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/guest/agentclient"
)

func (a *app) cpCommand() *cobra.Command {
	var opts core.CopyOptions
	c := &cobra.Command{
		Use:   "cp [flags] BOX:SRC HOSTDIR | cp [flags] HOSTSRC BOX:DIR",
		Short: "Copy files between a box and the host",
		Long: `Copy a file or directory out of a box into a host directory, or from the
host into a directory in the box (created if missing). A directory is
copied with its name; end the source with "/." to copy only its contents.

Copies out of a box are extracted safely: whatever the box puts in the
stream ("../" names, symlinks pointing outside), nothing is written outside
the destination directory. Device files and FIFOs are skipped (each is
reported on stderr), setuid/setgid bits are cleared, and files belong to
you unless -a is given; --unsafe-special-files turns the first two off.
Sparse files stay sparse. See docs/copying.md for how this compares with
docker cp.`,
		Example: `  boxctl cp web:/etc/os-release .
  boxctl cp ./site web:/srv
  boxctl cp web:/var/log/. ./logs
  boxctl cp -a web:/home/app ./backup     # keep the box's owners (needs root)`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcBox, srcPath, srcIn := splitBoxPath(args[0])
			dstBox, dstPath, dstIn := splitBoxPath(args[1])
			if dstIn && opts.UnsafeSpecialFiles {
				return errors.New("--unsafe-special-files applies to copies out of a box only (copies into a box keep device files and set-id bits)")
			}
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			switch {
			case srcIn && !dstIn:
				skipped := 0
				opts.OnSkip = func(s core.CopySkipped) {
					skipped++
					if skipped <= maxSkipWarnings {
						fmt.Fprintf(a.stderr, "boxctl: cp: skipped %s (device files and FIFOs are not created on the host without --unsafe-special-files)\n", s)
					}
				}
				err := rt.CopyOut(cmd.Context(), srcBox, srcPath, args[1], opts)
				if skipped > maxSkipWarnings {
					fmt.Fprintf(a.stderr, "boxctl: cp: skipped %d more device files and FIFOs\n", skipped-maxSkipWarnings)
				}
				return err
			case !srcIn && dstIn:
				return rt.CopyIn(cmd.Context(), dstBox, args[0], dstPath, opts)
			default:
				return errors.New("one side must be BOX:PATH and the other a host path (copying between two boxes, or host to host, is not supported)")
			}
		},
	}
	c.Flags().BoolVarP(&opts.FollowSymlinks, "follow-symlinks", "L", false, "copy what symlinks point to instead of the links")
	c.Flags().BoolVar(&opts.NoOverwrite, "no-overwrite", false, "refuse to replace existing files")
	c.Flags().BoolVarP(&opts.Archive, "archive", "a", false, "keep the files' owners (uid/gid) from the source; copying out with -a needs root")
	c.Flags().BoolVar(&opts.UnsafeSpecialFiles, "unsafe-special-files", false, "copying out: create the box's device files and FIFOs on the host and keep setuid/setgid bits (a box can then hand you a setuid-root program or a writable /dev/sda); only meaningful as root")
	return c
}

// maxSkipWarnings bounds the per-file lines cp prints for skipped special
// files; a box can send millions of them.
const maxSkipWarnings = 100

// splitBoxPath splits "box:/path"; host paths (absolute, ./, or without a
// colon) are not box paths.
func splitBoxPath(s string) (box, path string, ok bool) {
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") {
		return "", s, false
	}
	box, path, ok = strings.Cut(s, ":")
	if !ok || box == "" {
		return "", s, false
	}
	return box, path, true
}

func (a *app) logsCommand() *cobra.Command {
	var follow bool
	c := &cobra.Command{
		Use:   "logs [-f] BOX",
		Short: "Show a box's console log (kernel and guest agent messages)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			rt, err := a.runtime(ctx)
			if err != nil {
				return err
			}
			path, err := rt.ConsoleLog(ctx, args[0])
			if err != nil {
				return err
			}
			f, err := os.Open(path)
			if errors.Is(err, os.ErrNotExist) {
				if !follow {
					return nil // never started: no log yet
				}
			} else if err != nil {
				return err
			}
			out := bufio.NewWriter(a.stdout)
			defer out.Flush()
			if f != nil {
				defer f.Close()
				if _, err := io.Copy(out, f); err != nil {
					return err
				}
			}
			if !follow {
				return nil
			}
			for {
				_ = out.Flush()
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(200 * time.Millisecond):
				}
				if f == nil {
					if f, err = os.Open(path); err != nil {
						continue
					}
					defer f.Close()
				}
				n, err := io.Copy(out, f)
				if err != nil {
					return err
				}
				if n == 0 {
					b, err := rt.GetInfo(ctx, args[0])
					if err != nil || !b.Status.Active() {
						return nil
					}
				}
			}
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the box stops")
	return c
}

func (a *app) statsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stats BOX [BOX...]",
		Short: "Show running boxes' CPU, memory and commands run",
		Long: `Show each running box's guest CPU use (sampled over half a second), guest
memory in use and total, the VMM process's resident memory, how many
commands have run in the box, and how many of the box's connections, UDP
datagrams and DNS queries its network refused (the host-loopback rule and
--allow-net; "-" without a network).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 3, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCPU %\tMEM USAGE / LIMIT\tMEM %\tVMM RSS\tPROCS\tCOMMANDS\tNET DENIED")
			err = forEachBox(args, func(ref string) error {
				first, err := rt.Stats(cmd.Context(), ref)
				if err != nil {
					return err
				}
				time.Sleep(500 * time.Millisecond)
				second, err := rt.Stats(cmd.Context(), ref)
				if err != nil {
					return err
				}
				fmt.Fprintln(tw, statsRow(first, second))
				return nil
			})
			if ferr := tw.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
}

func statsRow(a, b *core.Stats) string {
	g1, g2 := a.Guest, b.Guest
	cpu := "-"
	mem := "-"
	memPct := "-"
	procs := "-"
	if g1 != nil && g2 != nil {
		if dt := cpuTotal(g2.CPU) - cpuTotal(g1.CPU); dt > 0 {
			cpu = fmt.Sprintf("%.1f%%", float64(cpuBusy(g2.CPU)-cpuBusy(g1.CPU))/float64(dt)*100*float64(max(g2.NumCPUs, 1)))
		}
		used := g2.MemoryTotalBytes - g2.MemoryAvailableBytes
		mem = config.HumanSize(used) + " / " + config.HumanSize(g2.MemoryTotalBytes)
		if g2.MemoryTotalBytes > 0 {
			memPct = fmt.Sprintf("%.1f%%", float64(used)/float64(g2.MemoryTotalBytes)*100)
		}
		procs = fmt.Sprint(g2.Processes)
	}
	rss := "-"
	if b.VM != nil {
		rss = config.HumanSize(b.VM.RSS)
	}
	denied := "-"
	if b.VM != nil {
		if n, ok := netDenied(b.VM.Extra); ok {
			denied = fmt.Sprint(n)
		}
	}
	return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s", b.Box.Name, cpu, mem, memPct, rss, procs, b.CommandsExecuted, denied)
}

// netDenied adds up the network's refusals from a VMM's metrics (the
// names sdk/usernet's Stats.Metrics gives them); false when the VMM
// reports no network.
func netDenied(extra map[string]float64) (uint64, bool) {
	var n float64
	found := false
	for _, k := range []string{"net_denied_tcp", "net_denied_udp", "net_dns_refused"} {
		if v, ok := extra[k]; ok {
			n += v
			found = true
		}
	}
	return uint64(n), found
}

func cpuBusy(c agentclient.CPUTimes) time.Duration {
	return c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ + c.Steal
}

func cpuTotal(c agentclient.CPUTimes) time.Duration { return cpuBusy(c) + c.Idle + c.IOWait }

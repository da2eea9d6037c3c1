package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/sdk"
)

func (a *app) pullCommand() *cobra.Command {
	var quiet bool
	var platform string
	c := &cobra.Command{
		Use:   "pull [-q] [--platform OS/ARCH] REFERENCE",
		Short: "Pull an image into the local cache",
		Long: `Pull an image and keep it in the content-addressed cache shared by all
boxes. References:
  alpine, docker.io/library/alpine:3.20, registry.example.com/app@sha256:...
  oci-layout:DIR[:TAG|@DIGEST]   an OCI image layout directory
  docker-archive:FILE            what 'docker save' writes
Per-layer progress bars are drawn on a terminal; otherwise progress is
printed line by line (-q prints only the digest).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			var prog *progress
			var fn func(sdk.PullEvent)
			if !quiet {
				prog = newProgress(a.stderr)
				fn = prog.event
			}
			img, err := rt.Pull(cmd.Context(), args[0], platform, fn)
			if prog != nil {
				prog.finish()
			}
			if err != nil {
				return err
			}
			if quiet {
				fmt.Fprintln(a.stdout, img.Digest)
			} else {
				fmt.Fprintf(a.stdout, "Pulled %s (%s)\n", args[0], img.Digest)
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the image digest")
	c.Flags().StringVar(&platform, "platform", "", "platform of a multi-arch image, e.g. linux/arm64 (default: this host's)")
	return c
}

// ensureImage pulls ref with progress on stderr unless it is cached.
func (a *app) ensureImage(ctx context.Context, rt *core.Runtime, ref, platform string) error {
	prog := newProgress(a.stderr)
	_, err := rt.EnsureImage(ctx, ref, platform, prog.event)
	prog.finish()
	return err
}

func (a *app) imagesCommand() *cobra.Command {
	var quiet bool
	c := &cobra.Command{
		Use:   "images [-q]",
		Short: "List cached images with their size, age and the boxes using them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			list, err := rt.Images(cmd.Context())
			if err != nil {
				return err
			}
			return a.printImages(list, quiet)
		},
	}
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only image digests (short)")
	return c
}

func (a *app) printImages(list []core.ImageInfo, quiet bool) error {
	if quiet {
		for _, img := range list {
			fmt.Fprintln(a.stdout, shortDigest(img.Digest))
		}
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "REFERENCE\tDIGEST\tPLATFORM\tSIZE\tPULLED\tBOXES")
	now := time.Now()
	for _, img := range list {
		refs := img.References
		if len(refs) == 0 {
			refs = []string{"<none>"}
		}
		plat := img.Platform.String()
		for _, ref := range refs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", ref, shortDigest(img.Digest), plat,
				config.HumanSize(img.Size), ago(img.PulledAt, now), len(img.UsedBy))
		}
	}
	return tw.Flush()
}

func shortDigest(d string) string {
	_, hex, ok := strings.Cut(d, ":")
	if !ok {
		hex = d
	}
	if len(hex) > 12 {
		hex = hex[:12]
	}
	return hex
}

func (a *app) rmiCommand() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "rmi [-f] IMAGE [IMAGE...]",
		Short: "Remove cached images",
		Long: `Remove images from the cache, by reference (removes that tag; the image
goes once no tag is left) or by digest. Refused while a box uses the image,
unless -f (the boxes keep working on their own copy of the root disk until
they are removed).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			return forEachBox(args, func(ref string) error {
				resp, err := rt.RemoveImage(cmd.Context(), ref, force)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "Untagged %s", ref)
				for _, d := range resp.Images {
					fmt.Fprintf(a.stdout, "\nDeleted %s", d)
				}
				fmt.Fprintln(a.stdout)
				return nil
			})
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "remove images that boxes use")
	return c
}

func (a *app) imageCommand() *cobra.Command {
	c := &cobra.Command{Use: "image", Short: "Manage cached images"}
	c.AddCommand(a.imagesCommand())
	c.Commands()[0].Use = "ls [-q]"
	var all bool
	prune := &cobra.Command{
		Use:   "prune [-a]",
		Short: "Remove cached images no box uses (only untagged ones unless -a), and every boot template",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			resp, err := rt.PruneImages(cmd.Context(), all)
			if err != nil {
				return err
			}
			for _, d := range resp.Images {
				fmt.Fprintf(a.stdout, "Deleted %s\n", d)
			}
			fmt.Fprintf(a.stdout, "Reclaimed %s\n", config.HumanSize(resp.Reclaimed))
			return nil
		},
	}
	prune.Flags().BoolVarP(&all, "all", "a", false, "also remove tagged images no box uses")
	c.AddCommand(prune)
	rm := a.rmiCommand()
	rm.Use = "rm [-f] IMAGE [IMAGE...]"
	c.AddCommand(rm, a.imageTemplatesCommand())
	return c
}

// progress renders pull events: bars redrawn in place on a terminal, lines
// otherwise.
type progress struct {
	w   io.Writer
	tty bool
	// push names the states of an upload (a push) rather than a download.
	push   bool
	mu     sync.Mutex
	layers map[string]*sdk.LayerProgress
	order  []string
	drawn  int
	last   map[string]string
}

func newProgress(w io.Writer) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &progress{w: w, tty: tty, layers: map[string]*sdk.LayerProgress{}, last: map[string]string{}}
}

func (p *progress) event(ev sdk.PullEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := ev.Status; s != "" {
		p.clear()
		fmt.Fprintln(p.w, s)
		p.redraw()
		return
	}
	l := ev.Layer
	if l == nil {
		return
	}
	if _, ok := p.layers[l.Digest]; !ok {
		p.order = append(p.order, l.Digest)
	}
	p.layers[l.Digest] = l
	if p.tty {
		p.clear()
		p.redraw()
		return
	}
	// Lines: one per state change, and one per quarter of a download.
	line := p.stateName(l.State)
	if l.State == sdk.LayerDownloading && l.Total > 0 {
		line += fmt.Sprintf(" %d%%", l.Done*100/l.Total/25*25)
	}
	if p.last[l.Digest] != line {
		p.last[l.Digest] = line
		fmt.Fprintf(p.w, "%s: %s\n", shortDigest(l.Digest), p.describe(l))
	}
}

func (p *progress) describe(l *sdk.LayerProgress) string {
	s := p.stateName(l.State)
	if l.Total > 0 && l.State == sdk.LayerDownloading {
		s += fmt.Sprintf(" %s/%s", config.HumanSize(l.Done), config.HumanSize(l.Total))
	} else if l.Total > 0 {
		s += " " + config.HumanSize(l.Total)
	}
	return s
}

func (p *progress) stateName(s sdk.LayerState) string {
	switch {
	case p.push && s == sdk.LayerCached:
		return "already in the registry"
	case p.push && s == sdk.LayerDownloading:
		return "uploading"
	case p.push && s == sdk.LayerDone:
		return "pushed"
	case s == sdk.LayerCached:
		return "already cached"
	}
	if s == sdk.LayerUnspecified {
		return "unknown"
	}
	return s.String()
}

// clear erases the bars drawn last time (terminal only).
func (p *progress) clear() {
	if !p.tty || p.drawn == 0 {
		return
	}
	fmt.Fprintf(p.w, "\x1b[%dA\x1b[J", p.drawn)
	p.drawn = 0
}

func (p *progress) redraw() {
	if !p.tty {
		return
	}
	const width = 30
	for _, d := range p.order {
		l := p.layers[d]
		bar := strings.Repeat(" ", width)
		if t := l.Total; t > 0 {
			n := int(l.Done * width / t)
			if l.State == sdk.LayerDone || l.State == sdk.LayerCached {
				n = width
			}
			n = min(max(n, 0), width)
			bar = strings.Repeat("=", n) + strings.Repeat(" ", width-n)
		}
		fmt.Fprintf(p.w, "%s [%s] %s\n", shortDigest(d), bar, p.describe(l))
	}
	p.drawn = len(p.order)
}

// finish leaves the last drawing on screen; nothing else to do.
func (p *progress) finish() {}

package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

func (a *app) commitCommand() *cobra.Command {
	var opts core.CommitOptions
	var quiet bool
	c := &cobra.Command{
		Use:   "commit [-m MESSAGE] [-a AUTHOR] BOX IMAGE[:TAG]",
		Short: "Make a new image of a box's changes",
		Long: `Make a new image from a box: the box's image plus one layer with every
change made in the box (new and changed files, and deleted ones as
whiteouts), stored in the local image cache and runnable with
'boxctl run IMAGE'. As with 'docker commit', the box's own command,
entrypoint, environment, working directory, user and labels become the new
image's defaults. IMAGE is a registry name with an optional tag (latest if
none): give one with a registry host (registry.example.com/team/app:v2) to
'boxctl push' it later.

A running box keeps running: its filesystem is frozen while its changes
are read (its writes wait meanwhile) and thawed afterwards, also on
failure; if boxctl dies meanwhile the guest thaws by itself within 10
seconds. A stopped box is booted for the commit (without running its
command) and stopped again. The files boxctl itself puts into every box
(/etc/hostname, /etc/hosts, a generated /etc/resolv.conf) are left out.`,
		Example: `  boxctl run -d --name dev alpine
  boxctl exec dev -- apk add git
  boxctl commit -m "with git" dev alpine-git:v1
  boxctl run --rm alpine-git:v1 -- git --version

  # for a registry
  boxctl commit dev registry.example.com/team/alpine-git:v1
  boxctl push registry.example.com/team/alpine-git:v1`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			rt, err := a.runtime(ctx)
			if err != nil {
				return err
			}
			if b, err := rt.GetInfo(ctx, args[0]); err == nil && !quiet && (b.Status == model.StatusStopped || b.Status == model.StatusConfigured) && !b.Config.AutoRemove {
				fmt.Fprintf(a.stderr, "box %s is %s: booting it to read its changes\n", b.Name, b.Status)
			}
			start := time.Now()
			img, err := rt.Commit(ctx, args[0], args[1], opts)
			if err != nil {
				return err
			}
			if quiet {
				fmt.Fprintln(a.stdout, img.Digest)
				return nil
			}
			name := args[1]
			if len(img.References) > 0 {
				name = img.References[0]
			}
			fmt.Fprintf(a.stdout, "Committed %s as %s (%s) in %s\n", args[0], name, img.Digest, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	c.Flags().StringVarP(&opts.Comment, "message", "m", "", "commit message, kept in the image's history")
	c.Flags().StringVarP(&opts.Author, "author", "a", "", `author, e.g. "Jane Doe <jane@example.com>"`)
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the new image's digest")
	return c
}

func (a *app) pushCommand() *cobra.Command {
	var quiet bool
	c := &cobra.Command{
		Use:   "push [-q] IMAGE[:TAG]",
		Short: "Upload an image from the local cache to its registry",
		Long: `Upload a cached image (pulled or committed) to the registry and repository
its name says: registry.example.com/team/app:v1 goes to registry.example.com,
a name without a host to Docker Hub. Blobs the registry has already are not
sent again; the image keeps its digest. Credentials and plain-HTTP
registries are configured as for pulls: the registry block of the config
(credential "host" { ... }, insecure = [...]) and Docker's config.json and
credential helpers ('docker login'). Registries on loopback may speak plain
HTTP without configuration.`,
		Example: `  boxctl commit dev registry.example.com/team/app:v1
  boxctl push registry.example.com/team/app:v1
  boxctl push localhost:5000/app:dev`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			prog := newProgress(a.stderr)
			prog.push = true
			fn := prog.event
			if quiet {
				fn = nil
			}
			d, err := rt.Push(cmd.Context(), args[0], fn)
			prog.finish()
			if err != nil {
				return err
			}
			if quiet {
				fmt.Fprintln(a.stdout, d)
			} else {
				fmt.Fprintf(a.stdout, "Pushed %s (%s)\n", args[0], d)
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the pushed digest")
	return c
}

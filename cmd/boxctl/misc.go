package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/pluginhost"
	"github.com/boxctl/boxctl/sdk"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the boxctl version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			commit := ""
			if info, ok := debug.ReadBuildInfo(); ok {
				for _, s := range info.Settings {
					if s.Key == "vcs.revision" {
						commit = s.Value
					}
				}
			}
			fmt.Fprintf(a.stdout, "boxctl %s\n", version)
			if commit != "" {
				fmt.Fprintf(a.stdout, "commit:          %s\n", commit)
			}
			fmt.Fprintf(a.stdout, "plugin protocol: %d\n", sdk.ProtocolVersion)
			fmt.Fprintf(a.stdout, "go:              %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

func (a *app) configCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Show or check the configuration",
	}
	c.AddCommand(&cobra.Command{
		Use:   "show",
		Short: "Print the effective configuration (file over built-in defaults) as HCL",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			_, err = a.stdout.Write(cfg.Format())
			return err
		},
	})
	c.AddCommand(&cobra.Command{
		Use:   "validate FILE",
		Short: "Check a config file: syntax, values, plugin binaries and each plugin's own config block",
		Long: `Check a config file without using it: HCL syntax and values, that each
plugin it selects or configures can be found (and matches its sha256), and
that each plugin accepts its config block. Problems are reported with
file:line:col.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.LoadFile(args[0])
			if err != nil {
				return err
			}
			if err := validatePlugins(cmd.Context(), cfg); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: ok\n", args[0])
			return nil
		},
	})
	return c
}

// validatePlugins resolves and configures every plugin the config selects or
// has a block for. Plugins run with a temporary home so nothing is written
// to the real one.
func validatePlugins(ctx context.Context, cfg *config.Config) error {
	tmp, err := os.MkdirTemp("", "boxctl-validate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	check := *cfg
	check.Home = tmp
	host := pluginhost.New(&check)
	defer host.Close()

	roles := map[string][]string{}
	var errs []error
	vmm, err := host.VMMName(ctx)
	if err != nil {
		errs = append(errs, err)
	} else {
		roles[vmm] = append(roles[vmm], sdk.RoleVMM)
	}
	roles[cfg.Storage] = append(roles[cfg.Storage], sdk.RoleDisks)
	roles[cfg.Images] = append(roles[cfg.Images], sdk.RoleImages)
	for name := range cfg.Plugins {
		if _, ok := roles[name]; !ok {
			roles[name] = nil
		}
	}
	names := make([]string, 0, len(roles))
	for n := range roles {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, err := host.Resolve(name); err != nil {
			errs = append(errs, err)
			continue
		}
		if len(roles[name]) == 0 {
			_, served, _, err := host.Describe(ctx, name)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			roles[name] = served
		}
		for _, role := range roles[name] {
			if _, err := host.Plugin(ctx, name, role); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	return errors.Join(errs...)
}

func (a *app) pluginsCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "plugins",
		Short: "Inspect plugins",
	}
	c.AddCommand(&cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the plugins boxctl can find, with their roles, versions and capabilities",
		Long: `List every plugin binary boxctl can find (configured paths, next to the
boxctl binary, and <home>/plugins), start each to ask what it serves, and
show which role the config selects it for.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			host := pluginhost.New(cfg, pluginhost.WithLogger(a.logger(cfg), a.stderr))
			defer host.Close()
			found := host.Discover()
			vmm, vmmRole := cfg.VMM, "vmm"
			if vmm == config.AutoVMM {
				// The VMM vmm = "auto" chooses here (boxctl info says why).
				vmm, vmmRole = "", "vmm (auto)"
				if choice, err := host.ChooseVMM(cmd.Context()); err == nil {
					vmm = choice.Name
				}
			}
			for _, n := range []string{vmm, cfg.Storage, cfg.Images} {
				if n == "" {
					continue
				}
				if _, ok := found[n]; !ok {
					found[n] = ""
				}
			}
			names := make([]string, 0, len(found))
			for n := range found {
				names = append(names, n)
			}
			sort.Strings(names)
			selected := map[string][]string{}
			if vmm != "" {
				selected[vmm] = append(selected[vmm], vmmRole)
			}
			selected[cfg.Storage] = append(selected[cfg.Storage], "storage")
			selected[cfg.Images] = append(selected[cfg.Images], "images")
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 3, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSELECTED AS\tROLES\tVERSION\tCAPABILITIES\tPATH")
			for _, n := range names {
				sel := strings.Join(selected[n], ",")
				if sel == "" {
					sel = "-"
				}
				info, roles, path, err := host.Describe(cmd.Context(), n)
				if err != nil {
					msg := err.Error()
					if i := strings.IndexByte(msg, '\n'); i > 0 {
						msg = msg[:i]
					}
					if path == "" {
						path = found[n]
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n, sel, "-", "-", "error: "+msg, orDash(path))
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n, sel, strings.Join(roles, ","), info.Version, orDash(strings.Join(info.Capabilities.Strings(), ",")), path)
			}
			return tw.Flush()
		},
	})
	return c
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

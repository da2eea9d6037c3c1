package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/pluginhost"
)

// hostInfo is what `boxctl info` reports.
type hostInfo struct {
	Home string `json:"home"`
	// Config is the config file; "" when only the built-in defaults apply.
	Config string `json:"config"`
	// Roles maps each role to the plugin the config selects for it (the
	// vmm role: as configured, "auto" included).
	Roles map[string]string `json:"roles"`
	VMM   vmmInfo           `json:"vmm"`
}

// vmmInfo is the VMM new boxes get, and why.
type vmmInfo struct {
	Configured  string                    `json:"configured"`
	Chosen      string                    `json:"chosen"`
	Accelerator string                    `json:"accelerator,omitempty"`
	Summary     string                    `json:"summary"`
	Candidates  []pluginhost.VMMCandidate `json:"candidates"`
}

func (a *app) infoCommand() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "info",
		Short: "Show the home, the config and which VMM and accelerator new boxes get, and why",
		Long: `Show the home directory, the config file, the plugin selected for each role,
and the VMM new boxes get on this host with its accelerator. With vmm = "auto"
(the default) every candidate is listed in order — libkrun, then qemu — with
its verdict: not found, not usable and why, or usable with which accelerator.
Boxes keep the VMM they were first started on; 'boxctl inspect' shows it.

It starts the VMM plugins to ask them (the KVM probe takes a moment).
--format json prints the same as JSON.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch format {
			case "", "table", "json":
			default:
				return fmt.Errorf("--format %q: use table or json", format)
			}
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			host := pluginhost.New(cfg, pluginhost.WithLogger(a.logger(cfg), a.stderr))
			defer host.Close()
			choice, err := host.ChooseVMM(cmd.Context())
			if err != nil {
				return err
			}
			info := hostInfo{
				Home:   cfg.Home,
				Config: cfg.File,
				Roles:  map[string]string{"vmm": cfg.VMM, "storage": cfg.Storage, "images": cfg.Images},
				VMM: vmmInfo{Configured: cfg.VMM, Chosen: choice.Name, Accelerator: choice.Accelerator,
					Summary: choice.Summary(), Candidates: choice.Candidates},
			}
			if format == "json" {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			a.writeHostInfo(info)
			return nil
		},
	}
	c.Flags().StringVar(&format, "format", "table", "output format: table or json")
	return c
}

func (a *app) writeHostInfo(info hostInfo) {
	w := a.stdout
	fmt.Fprintf(w, "home:    %s\n", info.Home)
	fmt.Fprintf(w, "config:  %s\n", orString(info.Config, "(none: built-in defaults)"))
	fmt.Fprintf(w, "plugins: vmm = %s, storage = %s, images = %s\n", info.Roles["vmm"], info.Roles["storage"], info.Roles["images"])
	v := info.VMM
	chosen := orString(v.Chosen, "none")
	if v.Accelerator != "" {
		chosen += " (" + v.Accelerator + ")"
	}
	if v.Configured == config.AutoVMM {
		fmt.Fprintf(w, "vmm:     %s → %s\n", config.AutoVMM, chosen)
	} else {
		fmt.Fprintf(w, "vmm:     %s\n", chosen)
	}
	for _, c := range v.Candidates {
		verdict := "not usable"
		switch {
		case c.Usable:
			verdict = "usable"
		case c.Path == "":
			verdict = "not found"
		}
		fmt.Fprintf(w, "  %s: %s", c.Name, verdict)
		if c.Accelerator != "" {
			fmt.Fprintf(w, " (%s)", c.Accelerator)
		}
		fmt.Fprintf(w, ": %s\n", strings.TrimPrefix(c.Reason, "not usable: "))
	}
}

// orString is s, or def when s is empty.
func orString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/boxctl/boxctl/config"
)

// VMMChoice is which VMM plugin new boxes get on this host, and why.
type VMMChoice struct {
	// Auto: the config says vmm = "auto", and Candidates were tried in
	// order.
	Auto bool
	// Name is the chosen plugin; "" when no candidate is usable.
	Name string
	// Accelerator is what the chosen plugin said it would use ("" when it
	// does not check the host).
	Accelerator string
	// Candidates are the plugins looked at, in order, each with its
	// verdict; for a configured VMM, that one alone.
	Candidates []VMMCandidate
}

// VMMCandidate is one VMM plugin's verdict on this host.
type VMMCandidate struct {
	Name string `json:"name"`
	// Path is the plugin binary; "" when not found.
	Path string `json:"path,omitempty"`
	// Checked: the verdict came from the plugin's CheckHost; false when
	// it was not found, failed to start, or has no host-check.
	Checked     bool   `json:"checked"`
	Usable      bool   `json:"usable"`
	Accelerator string `json:"accelerator,omitempty"`
	Reason      string `json:"reason"`
}

// Summary is the choice on one line, e.g. `auto → qemu (tcg): libkrun:
// plugin ... not found; qemu: KVM not usable (...): TCG software
// emulation`.
func (c VMMChoice) Summary() string {
	var b strings.Builder
	if c.Auto {
		b.WriteString(config.AutoVMM + " → ")
	}
	if c.Name == "" {
		b.WriteString("none")
	} else {
		b.WriteString(c.Name)
	}
	if c.Accelerator != "" {
		b.WriteString(" (" + c.Accelerator + ")")
	}
	var why []string
	for _, cand := range c.Candidates {
		why = append(why, cand.Name+": "+cand.Reason)
	}
	if len(why) > 0 {
		b.WriteString(": " + strings.Join(why, "; "))
	}
	return b.String()
}

// ErrNoUsableVMM: vmm = "auto" found no VMM plugin that can run VMs here.
var ErrNoUsableVMM = errors.New("no usable VMM plugin")

// VMMName is the VMM plugin new boxes get: the configured one, or for vmm
// = "auto" the first candidate usable on this host (ChooseVMM), chosen
// once per host. Only "auto" starts plugins to answer.
func (h *Host) VMMName(ctx context.Context) (string, error) {
	if h.cfg.VMM != config.AutoVMM {
		return h.cfg.VMM, nil
	}
	c, err := h.ChooseVMM(ctx)
	if err != nil {
		return "", err
	}
	if c.Name == "" {
		return "", fmt.Errorf("vmm = %q: %w on this host: %s; install one, or set vmm to a VMM plugin in %s",
			config.AutoVMM, ErrNoUsableVMM, c.Summary(), h.configName())
	}
	return c.Name, nil
}

func (h *Host) configName() string {
	if h.cfg.File != "" {
		return h.cfg.File
	}
	return "the config file"
}

// ChooseVMM says which VMM plugin new boxes get and why. For vmm = "auto"
// it tries config.AutoVMMCandidates in order: one whose binary is not
// found or that fails to start is skipped with that reason; one that
// starts is asked CheckHost (a plugin without host-check counts as
// usable); the first usable wins. For a configured VMM it checks that one
// alone and reports it as chosen whatever the verdict (the config wins).
// The choice is made once per host; an error is only a canceled ctx.
func (h *Host) ChooseVMM(ctx context.Context) (VMMChoice, error) {
	h.chooseMu.Lock()
	defer h.chooseMu.Unlock()
	if h.choice != nil {
		return *h.choice, nil
	}
	var c VMMChoice
	if h.cfg.VMM != config.AutoVMM {
		cand := h.checkVMM(ctx, h.cfg.VMM)
		c = VMMChoice{Name: cand.Name, Accelerator: cand.Accelerator, Candidates: []VMMCandidate{cand}}
	} else {
		c.Auto = true
		for _, name := range config.AutoVMMCandidates() {
			cand := h.checkVMM(ctx, name)
			c.Candidates = append(c.Candidates, cand)
			if cand.Usable {
				c.Name, c.Accelerator = cand.Name, cand.Accelerator
				break
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return VMMChoice{}, fmt.Errorf("choose the VMM: %w", err)
	}
	h.choice = &c
	return c, nil
}

// checkVMM is plugin name's verdict on this host.
func (h *Host) checkVMM(ctx context.Context, name string) VMMCandidate {
	cand := VMMCandidate{Name: name}
	path, err := h.Resolve(name)
	if err != nil {
		cand.Reason = err.Error()
		return cand
	}
	cand.Path = path
	vmm, info, err := h.NamedVMM(ctx, name)
	if err != nil {
		cand.Reason = "cannot start: " + err.Error()
		return cand
	}
	if !info.Capabilities.HostCheck {
		cand.Usable = true
		cand.Reason = "usable (the plugin does not check the host: no host-check capability)"
		return cand
	}
	r, err := vmm.CheckHost(ctx)
	if err != nil {
		cand.Reason = "CheckHost: " + err.Error()
		return cand
	}
	cand.Checked, cand.Usable, cand.Accelerator, cand.Reason = true, r.Usable, r.Accelerator, r.Reason
	if !r.Usable {
		cand.Reason = "not usable: " + r.Reason
	}
	return cand
}

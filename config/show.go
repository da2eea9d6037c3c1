package config

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
)

// Format renders the effective configuration as HCL that Parse accepts.
// Secrets (registry passwords and tokens) are masked.
func (c *Config) Format() []byte {
	f := hclwrite.NewEmptyFile()
	root := f.Body()
	if c.File != "" {
		root.AppendUnstructuredTokens(hclwrite.TokensForIdentifier(fmt.Sprintf("# from %s over the built-in defaults\n", c.File)))
	} else {
		root.AppendUnstructuredTokens(hclwrite.TokensForIdentifier("# built-in defaults (no config file found)\n"))
	}
	root.SetAttributeValue("home", cty.StringVal(c.Home))
	root.SetAttributeValue("log_level", cty.StringVal(c.LogLevel))
	root.SetAttributeValue("vmm", cty.StringVal(c.VMM))
	root.SetAttributeValue("storage", cty.StringVal(c.Storage))
	root.SetAttributeValue("images", cty.StringVal(c.Images))

	root.AppendNewline()
	d := root.AppendNewBlock("defaults", nil).Body()
	d.SetAttributeValue("cpus", cty.NumberIntVal(int64(c.Defaults.CPUs)))
	d.SetAttributeValue("memory", cty.StringVal(FormatSize(c.Defaults.MemoryMiB<<20)))
	d.SetAttributeValue("disk_size", cty.StringVal(FormatSize(c.Defaults.DiskSize)))
	d.SetAttributeValue("auto_remove", cty.BoolVal(c.Defaults.AutoRemove))
	d.SetAttributeValue("detach", cty.BoolVal(c.Defaults.Detach))
	d.SetAttributeValue("allow_host_loopback", cty.BoolVal(c.Defaults.AllowHostLoopback))
	d.SetAttributeValue("network", cty.StringVal(c.Defaults.Network))
	allow := make([]cty.Value, 0, len(c.Defaults.AllowNet))
	for _, r := range c.Defaults.AllowNet {
		allow = append(allow, cty.StringVal(r))
	}
	if len(allow) == 0 {
		d.SetAttributeValue("allow_net", cty.ListValEmpty(cty.String))
	} else {
		d.SetAttributeValue("allow_net", cty.ListVal(allow))
	}
	d.SetAttributeValue("boot_templates", cty.BoolVal(c.Defaults.BootTemplates))

	root.AppendNewline()
	sb := root.AppendNewBlock("sandbox", nil).Body()
	sb.SetAttributeValue("enabled", cty.BoolVal(c.Sandbox.Enabled))
	sb.SetAttributeValue("uid_base", cty.NumberIntVal(int64(c.Sandbox.UIDBase)))
	sb.SetAttributeValue("cgroups", cty.BoolVal(c.Sandbox.Cgroups))

	root.AppendNewline()
	r := root.AppendNewBlock("registry", nil).Body()
	r.SetAttributeValue("docker_credentials", cty.BoolVal(c.Registry.DockerCredentials))
	r.SetAttributeValue("insecure", stringList(c.Registry.Insecure))
	for _, m := range c.Registry.Mirrors {
		r.AppendNewBlock("mirror", []string{m.Registry}).Body().SetAttributeValue("endpoints", stringList(m.Endpoints))
	}
	for _, cr := range c.Registry.Credentials {
		b := r.AppendNewBlock("credential", []string{cr.Registry}).Body()
		if cr.Username != "" {
			b.SetAttributeValue("username", cty.StringVal(cr.Username))
			b.SetAttributeValue("password", cty.StringVal("(hidden)"))
		}
		if cr.Token != "" {
			b.SetAttributeValue("token", cty.StringVal("(hidden)"))
		}
	}

	names := make([]string, 0, len(c.Plugins))
	for n := range c.Plugins {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := c.Plugins[n]
		root.AppendNewline()
		b := root.AppendNewBlock("plugin", []string{n}).Body()
		if p.Path != "" {
			b.SetAttributeValue("path", cty.StringVal(p.Path))
		}
		if p.SHA256 != "" {
			b.SetAttributeValue("sha256", cty.StringVal(p.SHA256))
		}
		b.SetAttributeValue("call_timeout", cty.StringVal(p.CallTimeout.String()))
		if body := strings.TrimSpace(string(p.ConfigBody)); body != "" {
			cfg := b.AppendNewBlock("config", nil).Body()
			cfg.AppendUnstructuredTokens(hclwrite.TokensForIdentifier(body + "\n"))
		}
	}
	return hclwrite.Format(f.Bytes())
}

func stringList(in []string) cty.Value {
	if len(in) == 0 {
		return cty.ListValEmpty(cty.String)
	}
	vals := make([]cty.Value, len(in))
	for i, s := range in {
		vals[i] = cty.StringVal(s)
	}
	return cty.ListVal(vals)
}

package config

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/boxctl/boxctl/internal/namecheck"
	"github.com/boxctl/boxctl/sdk"
)

// ErrNotFound is returned when an explicitly named config file does not exist.
var ErrNotFound = errors.New("config file not found")

// Error is a configuration problem with HCL diagnostics. Its message shows
// each problem with file:line:col and a snippet of the source.
type Error struct {
	Diags hcl.Diagnostics
	Files map[string]*hcl.File
}

func (e *Error) Error() string {
	return FormatDiagnostics(e.Diags, e.Files)
}

// FormatDiagnostics renders diagnostics one after another as
//
//	file:line:col: summary
//	   3 |   memroy = "1G"
//	     |   ^^^^^^
//	  detail (what to do)
//
// files supplies the sources for the snippets; a diagnostic whose file is
// unknown is rendered without one.
func FormatDiagnostics(diags hcl.Diagnostics, files map[string]*hcl.File) string {
	var buf bytes.Buffer
	for i, d := range diags {
		if i > 0 {
			buf.WriteByte('\n')
		}
		sev := "error"
		if d.Severity == hcl.DiagWarning {
			sev = "warning"
		}
		if d.Subject == nil {
			fmt.Fprintf(&buf, "%s: %s", sev, d.Summary)
			if d.Detail != "" {
				fmt.Fprintf(&buf, "\n  %s", d.Detail)
			}
			continue
		}
		s := d.Subject
		fmt.Fprintf(&buf, "%s:%d:%d: %s: %s", s.Filename, s.Start.Line, s.Start.Column, sev, d.Summary)
		if f := files[s.Filename]; f != nil {
			writeSnippet(&buf, f.Bytes, *s)
		}
		if d.Detail != "" {
			fmt.Fprintf(&buf, "\n  %s", d.Detail)
		}
	}
	return buf.String()
}

func writeSnippet(buf *bytes.Buffer, src []byte, rng hcl.Range) {
	lines := strings.Split(string(src), "\n")
	if rng.Start.Line < 1 || rng.Start.Line > len(lines) {
		return
	}
	line := strings.TrimRight(lines[rng.Start.Line-1], "\r")
	width := 1
	if rng.End.Line == rng.Start.Line && rng.End.Column > rng.Start.Column {
		width = rng.End.Column - rng.Start.Column
	}
	col := max(rng.Start.Column, 1)
	if col-1 > len(line) {
		col = len(line) + 1
	}
	num := fmt.Sprintf("%d", rng.Start.Line)
	pad := strings.Repeat(" ", len(num))
	// Keep tabs in the underline so the caret lines up with the source.
	var lead strings.Builder
	for _, r := range line[:col-1] {
		if r == '\t' {
			lead.WriteRune('\t')
		} else {
			lead.WriteByte(' ')
		}
	}
	fmt.Fprintf(buf, "\n  %s | %s\n  %s | %s%s", num, line, pad, lead.String(), strings.Repeat("^", width))
}

// Unwrap lets errors.As find the diagnostics.
func (e *Error) Unwrap() error { return e.Diags }

// NewError wraps diagnostics about this config's files into an Error.
func (c *Config) NewError(diags hcl.Diagnostics) error {
	return &Error{Diags: diags, Files: c.files}
}

// Source says where Find found the config file.
type Source struct {
	Path string
	// From names what selected it: "--config", "$BOXCTL_CONFIG",
	// "$XDG_CONFIG_HOME", "/etc/boxctl", or "" for built-in defaults.
	From string
}

// Find looks the config file up: the explicit path (from --config) first,
// then $BOXCTL_CONFIG, then $XDG_CONFIG_HOME/boxctl/config.hcl (default
// ~/.config), then /etc/boxctl/config.hcl. An explicit path or
// $BOXCTL_CONFIG that does not exist is an error; otherwise no file means
// built-in defaults (Source.Path == "").
func Find(explicit string) (Source, error) {
	if explicit != "" {
		return mustExist(explicit, "--config")
	}
	if env := os.Getenv("BOXCTL_CONFIG"); env != "" {
		return mustExist(env, "$BOXCTL_CONFIG")
	}
	xdg := os.Getenv("XDG_CONFIG_HOME")
	if xdg == "" {
		if home, err := os.UserHomeDir(); err == nil {
			xdg = filepath.Join(home, ".config")
		}
	}
	candidates := []Source{{filepath.Join(xdg, "boxctl", "config.hcl"), "$XDG_CONFIG_HOME"}, {"/etc/boxctl/config.hcl", "/etc/boxctl"}}
	for _, c := range candidates {
		if c.Path == "" {
			continue
		}
		if _, err := os.Stat(c.Path); err == nil {
			return c, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return Source{}, fmt.Errorf("config file %s: %w", c.Path, err)
		}
	}
	return Source{}, nil
}

func mustExist(path, from string) (Source, error) {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Source{}, fmt.Errorf("config file %s (from %s): %w; create it or point %s at an existing file", path, from, ErrNotFound, from)
		}
		return Source{}, fmt.Errorf("config file %s (from %s): %w", path, from, err)
	}
	return Source{Path: path, From: from}, nil
}

// Load finds and loads the configuration (see Find). With no file it
// returns the built-in defaults.
func Load(explicit string) (*Config, error) {
	src, err := Find(explicit)
	if err != nil {
		return nil, err
	}
	if src.Path == "" {
		return Default(), nil
	}
	return LoadFile(src.Path)
}

// LoadFile reads and decodes one config file over the built-in defaults.
func LoadFile(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file %s: %w", path, err)
	}
	return Parse(src, path)
}

// Parse decodes HCL source over the built-in defaults. filename is used in
// diagnostics.
func Parse(src []byte, filename string) (*Config, error) {
	cfg := Default()
	cfg.File = filename
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	cfg.files[filename] = file
	if diags.HasErrors() {
		return nil, cfg.NewError(diags)
	}
	diags = cfg.decodeRoot(file.Body, map[string][]byte{filename: src})
	if diags.HasErrors() {
		return nil, cfg.NewError(diags)
	}
	return cfg, nil
}

var rootSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "home"}, {Name: "log_level"}, {Name: "vmm"}, {Name: "storage"}, {Name: "images"},
	},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "plugin", LabelNames: []string{"name"}},
		{Type: "defaults"},
		{Type: "registry"},
		{Type: "sandbox"},
	},
}

var sandboxSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "enabled"}, {Name: "uid_base"}, {Name: "cgroups"}},
}

var pluginSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "path"}, {Name: "sha256"}, {Name: "call_timeout"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "config"}},
}

var defaultsSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "cpus"}, {Name: "memory"}, {Name: "disk_size"}, {Name: "auto_remove"}, {Name: "detach"}, {Name: "allow_host_loopback"}, {Name: "boot_templates"},
		{Name: "network"}, {Name: "allow_net"},
	},
}

var registrySchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "insecure"}, {Name: "docker_credentials"}},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "mirror", LabelNames: []string{"registry"}},
		{Type: "credential", LabelNames: []string{"registry"}},
	},
}

var logLevels = []string{"trace", "debug", "info", "warn", "error", "off"}

// validPluginName is ^[a-z0-9][a-z0-9-]{0,62}$.
func validPluginName(s string) bool {
	return namecheck.Name(s, namecheck.LowerAlnum, func(c byte) bool { return namecheck.LowerAlnum(c) || c == '-' }, 62)
}

// CheckLogLevel checks a log level (case does not matter), as given in
// --log-level or $BOXCTL_LOG.
func CheckLogLevel(level string) error {
	l := strings.ToLower(strings.TrimSpace(level))
	for _, x := range logLevels {
		if l == x {
			return nil
		}
	}
	return fmt.Errorf("unknown log level %q: use one of %s", level, strings.Join(logLevels, ", "))
}

func (c *Config) decodeRoot(body hcl.Body, sources map[string][]byte) hcl.Diagnostics {
	content, diags := body.Content(rootSchema)
	d := decoder{diags: diags, files: sources}
	if a := content.Attributes["home"]; a != nil {
		var home string
		if d.decode(a, &home) {
			c.Home = d.nonEmpty(a, home, "home", "Set home to the directory boxctl keeps its state in, e.g. home = \"/var/lib/boxctl\".")
		}
	}
	if a := content.Attributes["log_level"]; a != nil {
		var lvl string
		if d.decode(a, &lvl) {
			c.LogLevel = d.oneOf(a, strings.ToLower(lvl), "log_level", logLevels)
		}
	}
	for _, role := range []struct {
		name string
		dst  *string
	}{{"vmm", &c.VMM}, {"storage", &c.Storage}, {"images", &c.Images}} {
		if a := content.Attributes[role.name]; a != nil {
			var v string
			if d.decode(a, &v) {
				if validPluginName(v) {
					*role.dst = v
				} else {
					d.errorf(a.Expr.Range(), "Invalid plugin name", "%s = %q is not a plugin name. Plugin names are lower case letters, digits and dashes, e.g. %s = %q; the binary is boxctl-plugin-<name>.", role.name, v, role.name, map[string]string{"vmm": DefaultVMM, "storage": DefaultStorage, "images": DefaultImages}[role.name])
				}
			}
		}
	}
	seen := map[string]string{}
	for _, blk := range content.Blocks {
		switch blk.Type {
		case "plugin":
			name := blk.Labels[0]
			if !validPluginName(name) {
				d.errorf(blk.LabelRanges[0], "Invalid plugin name", "plugin %q: plugin names are lower case letters, digits and dashes; the binary is boxctl-plugin-<name>.", name)
				continue
			}
			if prev, dup := c.Plugins[name]; dup {
				d.errorf(blk.DefRange, "Duplicate plugin block", "plugin %q is already configured at %s; merge the two blocks.", name, prev.DeclRange)
				continue
			}
			c.Plugins[name] = d.plugin(name, blk)
		case "defaults", "registry", "sandbox":
			if prev, dup := seen[blk.Type]; dup {
				d.errorf(blk.DefRange, "Duplicate "+blk.Type+" block", "A %s block was already given at %s; merge the two blocks.", blk.Type, prev)
				continue
			}
			seen[blk.Type] = blk.DefRange.String()
			switch blk.Type {
			case "defaults":
				d.defaults(&c.Defaults, blk.Body)
			case "registry":
				d.registry(&c.Registry, blk.Body)
			case "sandbox":
				d.sandbox(&c.Sandbox, blk.Body)
			}
		}
	}
	return d.diags
}

func (d *decoder) plugin(name string, blk *hcl.Block) *Plugin {
	p := &Plugin{Name: name, CallTimeout: DefaultCallTimeout, DeclRange: blk.DefRange}
	content, diags := blk.Body.Content(pluginSchema)
	d.diags = append(d.diags, diags...)
	if a := content.Attributes["path"]; a != nil {
		var path string
		if d.decode(a, &path) {
			p.Path = d.nonEmpty(a, path, "path", "Set path to the plugin binary, or remove the attribute to use boxctl-plugin-"+name+" next to boxctl.")
			p.PathRange = a.Expr.Range().Ptr()
		}
	}
	if a := content.Attributes["sha256"]; a != nil {
		var sum string
		if d.decode(a, &sum) {
			sum = strings.ToLower(strings.TrimSpace(sum))
			if b, err := hex.DecodeString(sum); err != nil || len(b) != 32 {
				d.errorf(a.Expr.Range(), "Invalid sha256", "sha256 must be 64 hex digits, as printed by `sha256sum %s`.", orDefault(p.Path, "boxctl-plugin-"+name))
			} else {
				p.SHA256 = sum
				p.SHA256Range = a.Expr.Range().Ptr()
			}
		}
	}
	if a := content.Attributes["call_timeout"]; a != nil {
		var s string
		if d.decode(a, &s) {
			t, err := time.ParseDuration(s)
			if err != nil || t <= 0 {
				d.errorf(a.Expr.Range(), "Invalid call_timeout", "call_timeout = %q is not a positive duration; write it like \"30s\" or \"2m\".", s)
			} else {
				p.CallTimeout = t
			}
		}
	}
	for _, cb := range content.Blocks {
		if len(p.ConfigBody) > 0 || p.ConfigStart.Line != 0 {
			d.errorf(cb.DefRange, "Duplicate config block", "plugin %q has more than one config block; merge them.", name)
			continue
		}
		body, ok := cb.Body.(*hclsyntax.Body)
		if !ok {
			d.errorf(cb.DefRange, "Unsupported config syntax", "Write the config block in HCL native syntax.")
			continue
		}
		p.ConfigBody, p.ConfigStart = innerSource(d.src(body.SrcRange.Filename), body.SrcRange)
	}
	return p
}

// innerSource returns the source between a block body's braces and the
// position of its first byte.
func innerSource(src []byte, rng hcl.Range) ([]byte, hcl.Pos) {
	start, end := rng.Start.Byte+1, rng.End.Byte-1
	if src == nil || start > end || end > len(src) {
		return nil, rng.Start
	}
	return append([]byte(nil), src[start:end]...), hcl.Pos{Line: rng.Start.Line, Column: rng.Start.Column + 1, Byte: start}
}

func (d *decoder) defaults(out *BoxDefaults, body hcl.Body) {
	content, diags := body.Content(defaultsSchema)
	d.diags = append(d.diags, diags...)
	if a := content.Attributes["cpus"]; a != nil {
		var n int
		if d.decode(a, &n) {
			if n < 1 || n > 256 {
				d.errorf(a.Expr.Range(), "Invalid cpus", "cpus = %d: a box needs between 1 and 256 vCPUs.", n)
			} else {
				out.CPUs = n
			}
		}
	}
	if a := content.Attributes["memory"]; a != nil {
		if n, ok := d.size(a, "memory"); ok {
			if err := CheckMemory(n); err != nil {
				d.errorf(a.Expr.Range(), "Invalid memory", "memory: %v.", err)
			} else {
				out.MemoryMiB = n >> 20
			}
		}
	}
	if a := content.Attributes["disk_size"]; a != nil {
		if n, ok := d.size(a, "disk_size"); ok {
			if err := CheckDiskSize(n); err != nil {
				d.errorf(a.Expr.Range(), "Invalid disk_size", "disk_size: %v.", err)
			} else {
				out.DiskSize = n
			}
		}
	}
	for _, b := range []struct {
		name string
		dst  *bool
	}{{"auto_remove", &out.AutoRemove}, {"detach", &out.Detach}, {"allow_host_loopback", &out.AllowHostLoopback}, {"boot_templates", &out.BootTemplates}} {
		if a := content.Attributes[b.name]; a != nil {
			d.decode(a, b.dst)
		}
	}
	if a := content.Attributes["network"]; a != nil {
		var mode string
		if d.decode(a, &mode) {
			if mode != NetworkUser && mode != NetworkNone {
				d.errorf(a.Expr.Range(), "Invalid network", "network = %q: use \"user\" (outbound through the host) or \"none\" (no network device).", mode)
			} else {
				out.Network = mode
			}
		}
	}
	if a := content.Attributes["allow_net"]; a != nil {
		var rules []string
		if d.decode(a, &rules) {
			ok := true
			for _, r := range rules {
				if _, err := sdk.ParseNetworkAllow(r); err != nil {
					d.errorf(a.Expr.Range(), "Invalid allow_net", "allow_net: %v.", err)
					ok = false
				}
			}
			if ok {
				out.AllowNet = rules
			}
		}
	}
	if out.Network == NetworkNone && len(out.AllowNet) > 0 {
		if a := content.Attributes["allow_net"]; a != nil {
			d.errorf(a.Expr.Range(), "Invalid allow_net", "allow_net applies to boxes with network = \"user\"; with network = \"none\" a box has no network to allow anything on. Remove one of them.")
		}
	}
}

func (d *decoder) sandbox(out *Sandbox, body hcl.Body) {
	content, diags := body.Content(sandboxSchema)
	d.diags = append(d.diags, diags...)
	for _, b := range []struct {
		name string
		dst  *bool
	}{{"enabled", &out.Enabled}, {"cgroups", &out.Cgroups}} {
		if a := content.Attributes[b.name]; a != nil {
			d.decode(a, b.dst)
		}
	}
	if a := content.Attributes["uid_base"]; a != nil {
		var n int64
		if d.decode(a, &n) {
			if n < MinSandboxUIDBase || n > MaxSandboxUID-MinSandboxUIDBase {
				d.errorf(a.Expr.Range(), "Invalid uid_base", "uid_base = %d: per-box user IDs must stay clear of real users and leave room for boxes; use a number from %d to %d, e.g. the default %d.",
					n, MinSandboxUIDBase, MaxSandboxUID-MinSandboxUIDBase, DefaultSandboxUIDBase)
			} else {
				out.UIDBase = uint32(n)
			}
		}
	}
}

func (d *decoder) registry(out *Registry, body hcl.Body) {
	content, diags := body.Content(registrySchema)
	d.diags = append(d.diags, diags...)
	if a := content.Attributes["insecure"]; a != nil {
		d.decode(a, &out.Insecure)
	}
	if a := content.Attributes["docker_credentials"]; a != nil {
		d.decode(a, &out.DockerCredentials)
	}
	for _, blk := range content.Blocks {
		host := blk.Labels[0]
		switch blk.Type {
		case "mirror":
			attrs, diags := blk.Body.JustAttributes()
			d.diags = append(d.diags, diags...)
			m := Mirror{Registry: host}
			for name, a := range attrs {
				if name != "endpoints" {
					d.errorf(a.NameRange, "Unsupported argument", "An argument named %q is not expected in a mirror block; the only one is endpoints = [\"https://mirror.example.com\"].", name)
					continue
				}
				d.decode(a, &m.Endpoints)
			}
			if attrs["endpoints"] == nil && !diags.HasErrors() {
				d.errorf(blk.DefRange, "Missing endpoints", "mirror %q needs endpoints = [\"https://...\"].", host)
			}
			out.Mirrors = append(out.Mirrors, m)
		case "credential":
			var raw struct {
				Username string `hcl:"username,optional"`
				Password string `hcl:"password,optional"`
				Token    string `hcl:"token,optional"`
			}
			if diags := gohcl.DecodeBody(blk.Body, nil, &raw); diags.HasErrors() {
				d.diags = append(d.diags, diags...)
				continue
			}
			if raw.Token == "" && raw.Username == "" {
				d.errorf(blk.DefRange, "Empty credential", "credential %q needs username and password, or token.", host)
				continue
			}
			out.Credentials = append(out.Credentials, Credential{Registry: host, Username: raw.Username, Password: raw.Password, Token: raw.Token})
		}
	}
}

// decoder accumulates diagnostics while decoding.
type decoder struct {
	diags hcl.Diagnostics
	files map[string][]byte
}

func (d *decoder) src(filename string) []byte {
	if d.files == nil {
		return nil
	}
	return d.files[filename]
}

func (d *decoder) decode(a *hcl.Attribute, target any) bool {
	diags := gohcl.DecodeExpression(a.Expr, nil, target)
	d.diags = append(d.diags, diags...)
	return !diags.HasErrors()
}

func (d *decoder) errorf(rng hcl.Range, summary, format string, args ...any) {
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   fmt.Sprintf(format, args...),
		Subject:  rng.Ptr(),
	})
}

func (d *decoder) nonEmpty(a *hcl.Attribute, v, name, fix string) string {
	if strings.TrimSpace(v) == "" {
		d.errorf(a.Expr.Range(), "Empty "+name, "%s must not be empty. %s", name, fix)
	}
	return v
}

func (d *decoder) oneOf(a *hcl.Attribute, v, name string, allowed []string) string {
	for _, x := range allowed {
		if v == x {
			return v
		}
	}
	d.errorf(a.Expr.Range(), "Invalid "+name, "%s = %q: use one of %s.", name, v, strings.Join(allowed, ", "))
	return v
}

func (d *decoder) size(a *hcl.Attribute, name string) (uint64, bool) {
	var s string
	if !d.decode(a, &s) {
		return 0, false
	}
	n, err := ParseSize(s)
	if err != nil {
		d.errorf(a.Expr.Range(), "Invalid "+name, "%s: %v.", name, err)
		return 0, false
	}
	return n, true
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

package sdk

import (
	"errors"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// Config is what a plugin receives in Configure: its own `config { ... }`
// block from the user's HCL file, and the places it may keep data.
type Config struct {
	// Filename is the HCL file the block came from; "" when there is none.
	Filename string
	// Body is the source of the block's body and BodyStart its position in
	// Filename, so that diagnostics point at the user's file.
	Body      []byte
	BodyStart hcl.Pos
	// StateDir is a directory the plugin owns for persistent data.
	StateDir string
	// Home is boxctl's home directory.
	Home string
	// Registry holds the core's registry settings (ImageSource only).
	Registry *RegistrySettings
}

// RegistrySettings are the core's `registry { ... }` settings, handed to the
// image plugin.
type RegistrySettings struct {
	Mirrors []RegistryMirror
	// Insecure hosts are reached over plain http (and https without
	// verification).
	Insecure    []string
	Credentials []RegistryCredential
	// UseDockerCredentials: Docker's config file and credential helpers are
	// consulted for hosts without an explicit credential.
	UseDockerCredentials bool
}

// RegistryMirror lists endpoints tried, in order, before a registry host.
type RegistryMirror struct {
	Registry  string
	Endpoints []string
}

// RegistryCredential is an explicit credential for one registry host: a
// username and password, or a bearer token.
type RegistryCredential struct {
	Registry           string
	Username, Password string
	Token              string
}

func registryToProto(r *RegistrySettings) *pluginv1.RegistrySettings {
	if r == nil {
		return nil
	}
	out := &pluginv1.RegistrySettings{Insecure: r.Insecure, UseDockerCredentials: r.UseDockerCredentials}
	for _, m := range r.Mirrors {
		out.Mirrors = append(out.Mirrors, &pluginv1.RegistrySettings_Mirror{Registry: m.Registry, Endpoints: m.Endpoints})
	}
	for _, c := range r.Credentials {
		out.Credentials = append(out.Credentials, &pluginv1.RegistrySettings_Credential{Registry: c.Registry, Username: c.Username, Password: c.Password, Token: c.Token})
	}
	return out
}

func registryFromProto(p *pluginv1.RegistrySettings) *RegistrySettings {
	if p == nil {
		return nil
	}
	out := &RegistrySettings{Insecure: p.GetInsecure(), UseDockerCredentials: p.GetUseDockerCredentials()}
	for _, m := range p.GetMirrors() {
		out.Mirrors = append(out.Mirrors, RegistryMirror{Registry: m.GetRegistry(), Endpoints: m.GetEndpoints()})
	}
	for _, c := range p.GetCredentials() {
		out.Credentials = append(out.Credentials, RegistryCredential{Registry: c.GetRegistry(), Username: c.GetUsername(), Password: c.GetPassword(), Token: c.GetToken()})
	}
	return out
}

// Decode decodes the plugin's config block into target, a pointer to a
// struct with `hcl:"name,optional"` tags (gohcl). Unknown attributes and
// wrong types come back as diagnostics that name the file, line and column;
// return them from Configure as they are.
func (c *Config) Decode(target any) error {
	if len(c.Body) == 0 {
		// No block: decode an empty body so required attributes are reported.
		diags := gohcl.DecodeBody(hcl.EmptyBody(), nil, target)
		if diags.HasErrors() {
			return diags
		}
		return nil
	}
	file, diags := hclsyntax.ParseConfig(c.Body, c.Filename, c.BodyStart)
	if diags.HasErrors() {
		return diags
	}
	diags = gohcl.DecodeBody(file.Body, nil, target)
	if diags.HasErrors() {
		return diags
	}
	return nil
}

// BodyRange is the range of the config block's body, for diagnostics about
// the block as a whole.
func (c *Config) BodyRange() *hcl.Range {
	if c.Filename == "" {
		return nil
	}
	return &hcl.Range{Filename: c.Filename, Start: c.BodyStart, End: c.BodyStart}
}

// ConfigError builds a diagnostic error about an attribute of the config
// block: summary says what is wrong, detail what to do.
func ConfigError(subject *hcl.Range, summary, detail string) error {
	return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: subject}}
}

func configFromRequest(req *pluginv1.ConfigureRequest) *Config {
	cfg := &Config{
		Filename: req.GetFilename(),
		Body:     req.GetBody(),
		StateDir: req.GetStateDir(),
		Home:     req.GetHome(),
		Registry: registryFromProto(req.GetRegistry()),
	}
	if p := req.GetBodyStart(); p != nil {
		cfg.BodyStart = hcl.Pos{Line: int(p.Line), Column: int(p.Column), Byte: int(p.Byte)}
	} else {
		cfg.BodyStart = hcl.InitialPos
	}
	return cfg
}

func configToRequest(cfg *Config) *pluginv1.ConfigureRequest {
	return &pluginv1.ConfigureRequest{
		Filename:  cfg.Filename,
		Body:      cfg.Body,
		BodyStart: posToProto(cfg.BodyStart),
		StateDir:  cfg.StateDir,
		Home:      cfg.Home,
		Registry:  registryToProto(cfg.Registry),
	}
}

func posToProto(p hcl.Pos) *pluginv1.Pos {
	return &pluginv1.Pos{Line: int64(p.Line), Column: int64(p.Column), Byte: int64(p.Byte)}
}

func posFromProto(p *pluginv1.Pos) hcl.Pos {
	return hcl.Pos{Line: int(p.GetLine()), Column: int(p.GetColumn()), Byte: int(p.GetByte())}
}

// diagnosticsToProto turns the error Configure returned into diagnostics.
// hcl.Diagnostics keep their ranges; any other error becomes one diagnostic
// without a location.
func diagnosticsToProto(err error) []*pluginv1.Diagnostic {
	if err == nil {
		return nil
	}
	var diags hcl.Diagnostics
	if !errors.As(err, &diags) {
		return []*pluginv1.Diagnostic{{
			Severity: pluginv1.Diagnostic_SEVERITY_ERROR,
			Summary:  err.Error(),
		}}
	}
	out := make([]*pluginv1.Diagnostic, 0, len(diags))
	for _, d := range diags {
		pd := &pluginv1.Diagnostic{
			Severity: pluginv1.Diagnostic_SEVERITY_ERROR,
			Summary:  d.Summary,
			Detail:   d.Detail,
		}
		if d.Severity == hcl.DiagWarning {
			pd.Severity = pluginv1.Diagnostic_SEVERITY_WARNING
		}
		if d.Subject != nil {
			pd.Subject = &pluginv1.Range{
				Filename: d.Subject.Filename,
				Start:    posToProto(d.Subject.Start),
				End:      posToProto(d.Subject.End),
			}
		}
		out = append(out, pd)
	}
	return out
}

// diagnosticsFromProto is the inverse of diagnosticsToProto. It returns nil
// when there are no error diagnostics.
func diagnosticsFromProto(in []*pluginv1.Diagnostic) error {
	var diags hcl.Diagnostics
	for _, pd := range in {
		d := &hcl.Diagnostic{Severity: hcl.DiagError, Summary: pd.GetSummary(), Detail: pd.GetDetail()}
		if pd.GetSeverity() == pluginv1.Diagnostic_SEVERITY_WARNING {
			d.Severity = hcl.DiagWarning
		}
		if s := pd.GetSubject(); s != nil {
			d.Subject = &hcl.Range{Filename: s.GetFilename(), Start: posFromProto(s.GetStart()), End: posFromProto(s.GetEnd())}
		}
		diags = append(diags, d)
	}
	if !diags.HasErrors() {
		return nil
	}
	return diags
}

// DecodeOptional decodes an optional attribute captured as an
// hcl.Expression field (`hcl:"name,optional"`) into target. It reports
// whether the attribute was set and its range, so a value the plugin
// rejects can be reported at its position in the user's file:
//
//	var s struct{ Accel hcl.Expression `hcl:"accel,optional"` }
//	cfg.Decode(&s)
//	var accel string
//	if rng, ok, err := sdk.DecodeOptional(s.Accel, &accel); err != nil { ... }
func DecodeOptional(expr hcl.Expression, target any) (*hcl.Range, bool, error) {
	if expr == nil {
		return nil, false, nil
	}
	v, diags := expr.Value(nil)
	if !diags.HasErrors() && v.IsNull() {
		return nil, false, nil
	}
	rng := expr.Range()
	if diags := gohcl.DecodeExpression(expr, nil, target); diags.HasErrors() {
		return &rng, true, diags
	}
	return &rng, true, nil
}

// Package pluginhost finds, verifies, starts and talks to boxctl's plugin
// processes. Plugins start lazily, on the first call a command makes to a
// role, and are stopped when the command ends (Close). Every call is
// bounded: a plugin that crashes or hangs mid-call yields a CallError naming
// the plugin, the call and the last lines it logged. It chooses the VMM
// plugin for vmm = "auto" (vmmchoice.go), and owns the directories the
// plugins' go-plugin sockets live in (sockets.go).
package pluginhost

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/hcl/v2"
	"google.golang.org/grpc"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/sdk"
)

// BinaryPrefix is the file name prefix of plugin binaries.
const BinaryPrefix = "boxctl-plugin-"

// ErrPluginNotFound: no binary for the plugin in any place looked.
var ErrPluginNotFound = errors.New("plugin binary not found")

// Host starts and tracks the plugin processes of one boxctl process.
type Host struct {
	cfg        *config.Config
	log        hclog.Logger
	logOut     io.Writer
	searchDirs []string
	stateRoot  string

	mu     sync.Mutex
	slots  map[string]*slot
	closed bool

	// starts and calls count plugin processes started and calls made.
	starts, calls atomic.Int64

	sockOnce sync.Once
	sockDir  string // see sockets.go

	// chooseMu guards the VMM chosen for vmm = "auto" (choice), chosen
	// once per host (see vmmchoice.go).
	chooseMu sync.Mutex
	choice   *VMMChoice
}

// slot serializes the start of one plugin, so different plugins start in
// parallel and one plugin starts once.
type slot struct {
	mu   sync.Mutex
	inst *instance
}

// Option configures a Host.
type Option func(*Host)

// WithLogger sets the logger plugin logs are routed through. Its level
// decides what is shown; plugins always log everything to the host, which
// keeps the last lines for error reports.
func WithLogger(l hclog.Logger, out io.Writer) Option {
	return func(h *Host) { h.log, h.logOut = l, out }
}

// WithSearchDirs replaces the directories searched for plugin binaries
// without a configured path. The default is the directory of the running
// executable, then <home>/plugins.
func WithSearchDirs(dirs ...string) Option {
	return func(h *Host) { h.searchDirs = dirs }
}

// New returns a Host for cfg. It starts nothing.
func New(cfg *config.Config, opts ...Option) *Host {
	h := &Host{
		cfg:       cfg,
		log:       hclog.NewNullLogger(),
		logOut:    io.Discard,
		stateRoot: filepath.Join(cfg.Home, "plugins-data"),
		slots:     map[string]*slot{},
	}
	if exe, err := os.Executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		h.searchDirs = append(h.searchDirs, filepath.Dir(exe))
	}
	h.searchDirs = append(h.searchDirs, filepath.Join(cfg.Home, "plugins"))
	for _, o := range opts {
		o(h)
	}
	if h.logOut == nil {
		h.logOut = io.Discard
	}
	return h
}

// VMM returns the configured VMM plugin (for vmm = "auto", the one chosen
// for this host: VMMName), starting it if needed. Its optional methods
// answer sdk.ErrUnsupported when the plugin lacks them: check Info's
// capabilities first.
func (h *Host) VMM(ctx context.Context) (sdk.VMMClient, error) {
	name, err := h.VMMName(ctx)
	if err != nil {
		return nil, err
	}
	return dispense[sdk.VMMClient](ctx, h, name, sdk.RoleVMM)
}

// NamedVMM returns the VMM plugin name, whatever the config selects (a
// box runs on the VMM it was created with), started and configured, with
// what it said about itself.
func (h *Host) NamedVMM(ctx context.Context, name string) (sdk.VMMClient, sdk.Info, error) {
	vmm, err := dispense[sdk.VMMClient](ctx, h, name, sdk.RoleVMM)
	if err != nil {
		return nil, sdk.Info{}, err
	}
	inst, err := h.instance(ctx, name)
	if err != nil {
		return nil, sdk.Info{}, err
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	return vmm, inst.infos[sdk.RoleVMM], nil
}

// Disks returns the configured storage plugin's DiskBackend.
func (h *Host) Disks(ctx context.Context) (sdk.DiskBackendClient, error) {
	return dispense[sdk.DiskBackendClient](ctx, h, h.cfg.Storage, sdk.RoleDisks)
}

// Snapshots returns the configured storage plugin's SnapshotBackend.
func (h *Host) Snapshots(ctx context.Context) (sdk.SnapshotBackendClient, error) {
	return dispense[sdk.SnapshotBackendClient](ctx, h, h.cfg.Storage, sdk.RoleSnapshots)
}

// Images returns the configured ImageSource plugin.
func (h *Host) Images(ctx context.Context) (sdk.ImageSourceClient, error) {
	return dispense[sdk.ImageSourceClient](ctx, h, h.cfg.Images, sdk.RoleImages)
}

// Info returns what the plugin configured for role (sdk.RoleVMM, ...)
// told about itself when it was started, starting it if needed.
func (h *Host) Info(ctx context.Context, role string) (sdk.Info, error) {
	name, err := h.roleName(ctx, role)
	if err != nil {
		return sdk.Info{}, err
	}
	if _, err := h.Role(ctx, role); err != nil {
		return sdk.Info{}, err
	}
	inst, err := h.instance(ctx, name)
	if err != nil {
		return sdk.Info{}, err
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	return inst.infos[role], nil
}

func (h *Host) roleName(ctx context.Context, role string) (string, error) {
	switch role {
	case sdk.RoleVMM:
		return h.VMMName(ctx)
	case sdk.RoleDisks, sdk.RoleSnapshots:
		return h.cfg.Storage, nil
	}
	return h.cfg.Images, nil
}

// Counts returns how many plugin processes this host started and how many
// calls it made to them.
func (h *Host) Counts() (starts, calls int64) { return h.starts.Load(), h.calls.Load() }

// Close stops every plugin this host started and removes their socket
// directory. Calls after Close fail.
func (h *Host) Close() {
	h.mu.Lock()
	h.closed = true
	slots := h.slots
	h.slots = map[string]*slot{}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, sl := range slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sl.mu.Lock()
			defer sl.mu.Unlock()
			if sl.inst != nil {
				sl.inst.stop()
				sl.inst = nil
			}
		}()
	}
	wg.Wait()
	h.removeSocketDir()
}

func dispense[T any](ctx context.Context, h *Host, name, role string) (T, error) {
	var zero T
	inst, err := h.instance(ctx, name)
	if err != nil {
		return zero, err
	}
	impl, err := inst.role(ctx, role, h.configFor(inst), h.cfg.Files())
	if err != nil {
		return zero, err
	}
	t, ok := impl.(T)
	if !ok {
		return zero, fmt.Errorf("plugin %q: role %s has an unexpected type %T", name, role, impl)
	}
	return t, nil
}

// Describe starts the named plugin (if needed) and returns its Info from
// the first role it serves, plus the roles it serves. Used by `plugins ls`.
func (h *Host) Describe(ctx context.Context, name string) (sdk.Info, []string, string, error) {
	inst, err := h.instance(ctx, name)
	if err != nil {
		return sdk.Info{}, nil, "", err
	}
	var roles []string
	var info *sdk.Info
	for _, role := range sdk.Roles() {
		raw, err := inst.rpc.Dispense(role)
		if err != nil {
			continue
		}
		// The server only registers services it has; probing Info tells.
		p, ok := raw.(sdk.Plugin)
		if !ok {
			continue
		}
		i, err := p.Info(ctx)
		if err != nil {
			if errors.Is(err, sdk.ErrUnsupported) {
				continue
			}
			return sdk.Info{}, nil, inst.path, err
		}
		roles = append(roles, role)
		if info == nil {
			info = &i
		} else {
			// Capabilities are per role; show them all.
			info.Capabilities = mergeCapabilities(info.Capabilities, i.Capabilities)
		}
	}
	if info == nil {
		return sdk.Info{}, nil, inst.path, fmt.Errorf("plugin %q (%s) serves no boxctl role", name, inst.path)
	}
	return *info, roles, inst.path, nil
}

// Discover lists plugin names found in the search directories and the
// config, with the path each resolves to.
func (h *Host) Discover() map[string]string {
	found := map[string]string{}
	for _, dir := range h.searchDirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			name, ok := strings.CutPrefix(e.Name(), BinaryPrefix)
			if !ok || e.IsDir() || name == "" {
				continue
			}
			if _, seen := found[name]; !seen {
				found[name] = filepath.Join(dir, e.Name())
			}
		}
	}
	for name, p := range h.cfg.Plugins {
		if p.Path != "" {
			found[name] = p.Path
		}
	}
	return found
}

func (h *Host) configFor(inst *instance) *sdk.Config {
	p := h.cfg.Plugin(inst.name)
	cfg := &sdk.Config{
		Body:      p.ConfigBody,
		BodyStart: p.ConfigStart,
		StateDir:  filepath.Join(h.stateRoot, inst.name),
		Home:      h.cfg.Home,
	}
	if len(p.ConfigBody) > 0 || p.ConfigStart.Line > 0 {
		cfg.Filename = h.cfg.File
	}
	if inst.name == h.cfg.Images {
		cfg.Registry = registrySettings(h.cfg.Registry)
	}
	return cfg
}

// mergeCapabilities is the union of two roles' capabilities.
func mergeCapabilities(a, b sdk.Capabilities) sdk.Capabilities {
	return sdk.CapabilitiesOf(append(a.Strings(), b.Strings()...))
}

func registrySettings(r config.Registry) *sdk.RegistrySettings {
	out := &sdk.RegistrySettings{Insecure: r.Insecure, UseDockerCredentials: r.DockerCredentials}
	for _, m := range r.Mirrors {
		out.Mirrors = append(out.Mirrors, sdk.RegistryMirror{Registry: m.Registry, Endpoints: m.Endpoints})
	}
	for _, c := range r.Credentials {
		out.Credentials = append(out.Credentials, sdk.RegistryCredential{Registry: c.Registry, Username: c.Username, Password: c.Password, Token: c.Token})
	}
	return out
}

// instance returns the running plugin process for name, starting it.
func (h *Host) instance(ctx context.Context, name string) (*instance, error) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, fmt.Errorf("plugin %q: the plugin host is closed", name)
	}
	sl, ok := h.slots[name]
	if !ok {
		sl = &slot{}
		h.slots[name] = sl
	}
	h.mu.Unlock()

	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.inst != nil && !sl.inst.client.Exited() {
		return sl.inst, nil
	}
	if sl.inst != nil {
		// It exited (crashed, or was killed for hanging): start anew.
		sl.inst.release()
		sl.inst = nil
	}
	inst, err := h.start(ctx, name)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		inst.stop()
		return nil, fmt.Errorf("plugin %q: the plugin host is closed", name)
	}
	sl.inst = inst
	return inst, nil
}

// Plugin starts the named plugin and configures its role (sdk.RoleVMM,
// ...), whatever the config selects for that role. `config validate` uses
// it to check every plugin block.
func (h *Host) Plugin(ctx context.Context, name, role string) (sdk.Plugin, error) {
	return dispense[sdk.Plugin](ctx, h, name, role)
}

// Role returns the configured plugin for a role (sdk.RoleVMM, ...),
// started and configured.
func (h *Host) Role(ctx context.Context, role string) (sdk.Plugin, error) {
	switch role {
	case sdk.RoleVMM:
		return h.VMM(ctx)
	case sdk.RoleDisks:
		return h.Disks(ctx)
	case sdk.RoleSnapshots:
		return h.Snapshots(ctx)
	case sdk.RoleImages:
		return h.Images(ctx)
	}
	return nil, fmt.Errorf("unknown plugin role %q", role)
}

// Prestart starts the plugins serving the given roles concurrently and
// configures them, so a command that will need several pays for one plugin
// start instead of several in a row. Errors are left for the first real
// use to report.
func (h *Host) Prestart(ctx context.Context, roles ...string) {
	_ = h.Ready(ctx, roles...)
}

// Ready starts and configures the plugins serving the given roles, side
// by side, and reports every one that cannot serve: no binary, a failed
// start, a rejected config block. Like Prestart it leaves them running for
// the calls that follow; unlike Prestart it says what went wrong, so a
// caller can refuse work that would need them (create refuses a box that
// could never start).
func (h *Host) Ready(ctx context.Context, roles ...string) error {
	errs := make([]error, len(roles))
	var wg sync.WaitGroup
	for i, role := range roles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = h.Role(ctx, role)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Resolve returns the binary path for the named plugin, checking it exists
// and, when configured, its sha256.
func (h *Host) Resolve(name string) (string, error) {
	p := h.cfg.Plugin(name)
	path := p.Path
	if path != "" {
		if err := checkExecutable(path); err != nil {
			return "", h.configError(p.PathRange, "Plugin binary not usable",
				fmt.Sprintf("plugin %q: %v. Build it (make build) or correct path.", name, err), err)
		}
	} else {
		var looked []string
		for _, dir := range h.searchDirs {
			cand := filepath.Join(dir, BinaryPrefix+name)
			looked = append(looked, cand)
			if checkExecutable(cand) == nil {
				path = cand
				break
			}
		}
		if path == "" {
			where := "the config"
			if h.cfg.File != "" {
				where = h.cfg.File
			}
			return "", fmt.Errorf("plugin %q: %w: looked for %s; build it with `make build`, install it next to boxctl, or set plugin %q { path = \"...\" } in %s",
				name, ErrPluginNotFound, strings.Join(looked, ", "), name, where)
		}
	}
	if p.SHA256 != "" {
		sum, err := fileSHA256(path)
		if err != nil {
			return "", fmt.Errorf("plugin %q: checksum %s: %w", name, path, err)
		}
		if sum != p.SHA256 {
			return "", h.configError(p.SHA256Range, "Plugin checksum mismatch",
				fmt.Sprintf("plugin %q: %s has sha256 %s, but the config expects %s. The binary changed: if you upgraded it on purpose, set sha256 = %q; otherwise reinstall the plugin. It was not started.", name, path, sum, p.SHA256, sum),
				ErrChecksumMismatch)
		}
	}
	return path, nil
}

// ErrChecksumMismatch: the plugin binary's sha256 differs from the config.
var ErrChecksumMismatch = errors.New("plugin checksum mismatch")

// configError reports a problem at a config location when there is one.
func (h *Host) configError(rng *hcl.Range, summary, detail string, cause error) error {
	if rng == nil {
		return fmt.Errorf("%s: %w", detail, cause)
	}
	return &locatedError{
		err:   h.cfg.NewError(hcl.Diagnostics{{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: rng}}),
		cause: cause,
	}
}

// locatedError is a config diagnostic that also matches its cause.
type locatedError struct {
	err   error
	cause error
}

func (e *locatedError) Error() string   { return e.err.Error() }
func (e *locatedError) Unwrap() []error { return []error{e.err, e.cause} }

func checkExecutable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s does not exist: %w", path, ErrPluginNotFound)
		}
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s is a directory", path)
	}
	if st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable (chmod +x it)", path)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (h *Host) start(ctx context.Context, name string) (*instance, error) {
	path, err := h.Resolve(name)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(h.stateRoot, name), 0o700); err != nil {
		return nil, fmt.Errorf("plugin %q: create state dir: %w", name, err)
	}
	p := h.cfg.Plugin(name)
	inst := &instance{name: name, path: path, callTimeout: p.CallTimeout, ring: newLogRing(20), configured: map[string]error{}, calls: &h.calls}
	h.starts.Add(1)

	logger := hclog.NewInterceptLogger(&hclog.LoggerOptions{
		Name:   "plugin",
		Level:  hclog.Trace,
		Output: io.Discard,
	})
	logger.RegisterSink(inst.ring)
	logger.RegisterSink(hclog.NewSinkAdapter(&hclog.LoggerOptions{
		Level:  h.log.GetLevel(),
		Output: h.logOut,
	}))

	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), "BOXCTL_PLUGIN_NAME="+name, sdk.HostPIDEnv+"="+strconv.Itoa(os.Getpid()))
	if dir := h.socketDir(); dir != "" {
		cmd.Env = append(cmd.Env, plugin.EnvUnixSocketDir+"="+dir)
	}
	// The plugin exits by itself when this process dies (sdk.Serve
	// watches it). As a second line of defence, for plugins not built with
	// the sdk, the kernel sends it SIGTERM when the thread that started it
	// exits: connect starts it from a thread kept for its lifetime.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	inst.client = plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake(),
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: sdk.ClientPluginSet()},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		// No AutoMTLS: both ends check each other's peer credentials
		// instead (sdk/peercred.go says why that protects as much, and
		// what it saves).
		Logger:       logger.Named(name),
		StartTimeout: inst.callTimeout,
		GRPCDialOptions: append(sdk.GRPCDialOptions(cmd),
			grpc.WithChainUnaryInterceptor(inst.unaryInterceptor),
			grpc.WithChainStreamInterceptor(inst.streamInterceptor),
		),
	})
	started := time.Now()
	rpc, err := inst.connect()
	if err != nil {
		inst.stop()
		return nil, inst.startError(err)
	}
	inst.rpc = rpc
	h.log.Debug("plugin started", "plugin", name, "path", path, "took", time.Since(started))
	_ = ctx
	return inst, nil
}

// instance is one running plugin process.
type instance struct {
	// calls counts the calls made to any plugin of the host.
	calls       *atomic.Int64
	name        string
	path        string
	callTimeout time.Duration
	client      *plugin.Client
	rpc         plugin.ClientProtocol
	ring        *logRing
	// done ends the goroutine that holds the thread the plugin was
	// started from (see connect).
	done     chan struct{}
	doneOnce sync.Once

	mu         sync.Mutex
	configured map[string]error
	roles      map[string]any
	// infos is what each role's Info said, asked once at dispense.
	infos map[string]sdk.Info
}

// connect starts the plugin process and connects to it. PR_SET_PDEATHSIG
// fires when the *thread* that forked the child exits, and Go forks from
// whatever thread the calling goroutine runs on and may end threads (a
// goroutine that returns while locked to one). So the start runs on a
// goroutine locked to its thread, which then waits, holding the thread,
// until the instance is stopped or released.
func (inst *instance) connect() (plugin.ClientProtocol, error) {
	type result struct {
		rpc plugin.ClientProtocol
		err error
	}
	inst.done = make(chan struct{})
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		rpc, err := inst.client.Client()
		res <- result{rpc, err}
		<-inst.done
	}()
	r := <-res
	return r.rpc, r.err
}

// stop stops the plugin process and releases its thread.
func (inst *instance) stop() {
	inst.client.Kill()
	inst.release()
}

// release lets go of the thread the plugin was started from. Call it only
// when the plugin process is gone (stopped or exited by itself).
func (inst *instance) release() {
	inst.doneOnce.Do(func() {
		if inst.done != nil {
			close(inst.done)
		}
	})
}

func (inst *instance) startError(err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Incompatible API version") || strings.Contains(msg, "incompatible API version"):
		return fmt.Errorf("plugin %q (%s) speaks an unsupported plugin protocol version: %w; this boxctl speaks protocol %d. Install a plugin built for this boxctl version (or upgrade boxctl)\n%s",
			inst.name, inst.path, ErrProtocolMismatch, sdk.ProtocolVersion, inst.ring.tail())
	case strings.Contains(msg, "timeout while waiting for plugin to start"):
		return fmt.Errorf("plugin %q (%s) did not start within %s: %w%s", inst.name, inst.path, inst.callTimeout, ErrPluginHung, inst.ring.tail())
	default:
		return fmt.Errorf("plugin %q (%s) failed to start: %v%s", inst.name, inst.path, err, inst.ring.tail())
	}
}

// ErrProtocolMismatch: the plugin speaks no protocol version this boxctl
// speaks.
var ErrProtocolMismatch = errors.New("plugin protocol version mismatch")

// role dispenses and configures one role of the instance, once.
func (inst *instance) role(ctx context.Context, role string, cfg *sdk.Config, cfgFiles map[string]*hcl.File) (any, error) {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if impl, ok := inst.roles[role]; ok {
		return impl, inst.configured[role]
	}
	raw, err := inst.rpc.Dispense(role)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: dispense %s: %w", inst.name, role, err)
	}
	p, ok := raw.(sdk.Plugin)
	if !ok {
		return nil, fmt.Errorf("plugin %q: role %s: unexpected client type %T", inst.name, role, raw)
	}
	info, err := p.Info(ctx)
	if errors.Is(err, sdk.ErrUnsupported) {
		return nil, fmt.Errorf("plugin %q (%s) does not serve the %s role; choose a plugin that does in the config", inst.name, inst.path, roleTitle(role))
	}
	if err != nil {
		return nil, err
	}
	inst.mu.Unlock()
	err = p.Configure(ctx, cfg)
	inst.mu.Lock()
	if err != nil {
		var diags hcl.Diagnostics
		if errors.As(err, &diags) {
			err = &ConfigureError{Plugin: inst.name, Diags: diags, Files: cfgFiles}
		} else {
			err = fmt.Errorf("plugin %q: configure: %w", inst.name, err)
		}
	}
	if inst.roles == nil {
		inst.roles = map[string]any{}
		inst.infos = map[string]sdk.Info{}
	}
	inst.roles[role] = raw
	inst.infos[role] = info
	inst.configured[role] = err
	return raw, err
}

func roleTitle(role string) string {
	switch role {
	case sdk.RoleVMM:
		return "VMM"
	case sdk.RoleDisks:
		return "DiskBackend"
	case sdk.RoleSnapshots:
		return "SnapshotBackend"
	case sdk.RoleImages:
		return "ImageSource"
	}
	return role
}

// ConfigureError is a plugin's rejection of its config block. Render it
// with the config's files (config.FormatDiagnostics) to show snippets.
type ConfigureError struct {
	Plugin string
	Diags  hcl.Diagnostics
	Files  map[string]*hcl.File
}

func (e *ConfigureError) Error() string {
	return fmt.Sprintf("plugin %q rejected its config:\n%s", e.Plugin, config.FormatDiagnostics(e.Diags, e.Files))
}

func (e *ConfigureError) Unwrap() error { return e.Diags }

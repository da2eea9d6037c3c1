package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
)

// app holds what the commands of one invocation share.
type app struct {
	configPath string
	home       string
	logLevel   string

	stdout io.Writer
	stderr io.Writer

	cfg *config.Config
	rt  *core.Runtime
	log hclog.Logger
}

func newApp() *app {
	return &app{stdout: os.Stdout, stderr: os.Stderr}
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "boxctl",
		Short: "Run OCI images in hardware-isolated micro-VMs",
		Long: `boxctl runs OCI images inside micro-VMs ("boxes") that persist across stop and start.

It is daemonless: every command opens the home directory, does its work and
exits. Hypervisor, disk format and image source are plugins chosen in the
HCL config (see 'boxctl config show').

Environment:
  BOXCTL_CONFIG   config file (default: $XDG_CONFIG_HOME/boxctl/config.hcl, then /etc/boxctl/config.hcl)
  BOXCTL_HOME     home directory (default: $XDG_DATA_HOME/boxctl)
  BOXCTL_LOG      log level: trace, debug, info, warn, error, off`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		DisableAutoGenTag: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.configPath, "config", "", "config file (overrides $BOXCTL_CONFIG and the default locations)")
	pf.StringVar(&a.home, "home", "", "home directory for state, images and boxes (overrides the config)")
	pf.StringVar(&a.logLevel, "log-level", "", "log level: trace, debug, info, warn, error, off (default from $BOXCTL_LOG or the config: warn)")
	// A bad log level is refused before any command runs, rather than
	// quietly logging at some other level.
	root.PersistentPreRunE = func(*cobra.Command, []string) error { return a.checkLogLevel() }
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w\nSee '%s --help'", err, c.CommandPath())
	})

	root.AddCommand(
		a.runCommand(),
		a.execCommand(),
		a.createCommand(),
		a.startCommand(),
		a.stopCommand(),
		a.rmCommand(),
		a.lsCommand(),
		a.inspectCommand(),
		a.cpCommand(),
		a.logsCommand(),
		a.statsCommand(),
		a.pullCommand(),
		a.imagesCommand(),
		a.rmiCommand(),
		a.imageCommand(),
		a.commitCommand(),
		a.pushCommand(),
		a.pluginsCommand(),
		a.configCommand(),
		a.versionCommand(),
		a.infoCommand(),
		a.monitorCommand(),
		a.snapshotCommand(),
		a.cloneCommand(),
		a.checkpointCommand(),
		a.suspendCommand(),
		a.forkCommand(),
		a.volumeCommand(),
		a.mcpCommand(),
		a.serveCommand(),
	)
	root.AddCommand(a.pauseCommands()...)
	root.AddCommand(a.archiveCommands()...)
	return root
}

// loadConfig loads the configuration once, applying --home.
func (a *app) loadConfig() (*config.Config, error) {
	if a.cfg != nil {
		return a.cfg, nil
	}
	cfg, err := config.Load(a.configPath)
	if err != nil {
		return nil, err
	}
	if a.home != "" {
		cfg.Home = a.home
	}
	a.cfg = cfg
	return cfg, nil
}

// checkLogLevel refuses an unknown --log-level or $BOXCTL_LOG (the
// config's log_level is checked when it is loaded).
func (a *app) checkLogLevel() error {
	if a.logLevel != "" {
		if err := config.CheckLogLevel(a.logLevel); err != nil {
			return fmt.Errorf("--log-level: %w", err)
		}
		return nil
	}
	if env := os.Getenv("BOXCTL_LOG"); env != "" {
		if err := config.CheckLogLevel(env); err != nil {
			return fmt.Errorf("$BOXCTL_LOG: %w", err)
		}
	}
	return nil
}

// logger builds the logger from --log-level, $BOXCTL_LOG, then the config.
func (a *app) logger(cfg *config.Config) hclog.Logger {
	if a.log != nil {
		return a.log
	}
	level := a.logLevel
	if level == "" {
		level = os.Getenv("BOXCTL_LOG")
	}
	if level == "" && cfg != nil {
		level = cfg.LogLevel
	}
	if level == "" {
		level = config.DefaultLogLevel
	}
	a.log = hclog.New(&hclog.LoggerOptions{
		Name:   "boxctl",
		Level:  hclog.LevelFromString(strings.ToLower(level)),
		Output: a.stderr,
	})
	return a.log
}

// runtime opens the runtime once per invocation.
func (a *app) runtime(ctx context.Context) (*core.Runtime, error) {
	if a.rt != nil {
		return a.rt, nil
	}
	cfg, err := a.loadConfig()
	if err != nil {
		return nil, err
	}
	opts := []core.Option{core.WithConfig(cfg), core.WithLogger(a.logger(cfg), a.stderr)}
	if point := os.Getenv("BOXCTL_CRASH_AT"); point != "" {
		// Test hook: the crash tests kill boxctl at a named step.
		opts = append(opts, core.WithCrashPoint(point))
	}
	rt, err := core.Open(ctx, opts...)
	if err != nil {
		return nil, err
	}
	a.rt = rt
	return rt, nil
}

// close shuts the runtime down: non-detached boxes this invocation started
// are stopped, plugins are stopped.
func (a *app) close() {
	if a.rt != nil {
		if err := a.rt.Close(); err != nil {
			fmt.Fprintf(a.stderr, "boxctl: %v\n", err)
		}
		a.rt = nil
	}
}

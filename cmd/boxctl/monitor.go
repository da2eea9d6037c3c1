package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/monitor"
	"github.com/boxctl/boxctl/core/pluginhost"
	"github.com/boxctl/boxctl/core/state"
)

// monitorCommand is the hidden per-box supervisor. The runtime starts it
// detached, with the ready pipe as file descriptor 3.
func (a *app) monitorCommand() *cobra.Command {
	var home, boxID, runID string
	c := &cobra.Command{
		Use:    "monitor --home DIR --box ID --run RUN",
		Short:  "Supervise one box's VM (internal; started by boxctl)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMonitor(home, boxID, runID)
		},
	}
	c.Flags().StringVar(&home, "home", "", "home directory")
	c.Flags().StringVar(&boxID, "box", "", "box ID")
	c.Flags().StringVar(&runID, "run", "", "run ID")
	for _, f := range []string{"home", "box", "run"} {
		_ = c.MarkFlagRequired(f)
	}
	return c
}

func runMonitor(home, boxID, runID string) error {
	// A monitor lives as long as its box: Go's default GC target, not the
	// short-lived commands' (cliGCPercent), unless $GOGC says otherwise.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(100)
	}
	// The monitor outlives the terminal that started boxctl.
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	boxDir := filepath.Join(home, "boxes", boxID)
	ready := os.NewFile(3, "ready")
	launch, err := monitor.ReadLaunch(filepath.Join(boxDir, "launch.json"))
	if err != nil {
		return reportEarly(ready, err)
	}
	if launch.RunID != runID || launch.BoxID != boxID {
		return reportEarly(ready, fmt.Errorf("launch file is for box %s run %s, not %s run %s", launch.BoxID, launch.RunID, boxID, runID))
	}
	cfg, err := config.Parse([]byte(launch.Config), filepath.Join(boxDir, "launch.json#config"))
	if err != nil {
		return reportEarly(ready, err)
	}
	cfg.Home = home
	if launch.VMM != "" {
		// The box runs on the VMM it was started with, whatever vmm =
		// "auto" would choose: the monitor never chooses again.
		cfg.VMM = launch.VMM
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Name:   "monitor",
		Level:  hclog.LevelFromString(orDefault(launch.LogLevel, "info")),
		Output: os.Stderr,
	})
	store, err := state.Open(ctx, home)
	if err != nil {
		return reportEarly(ready, err)
	}
	hostOpts := []pluginhost.Option{pluginhost.WithLogger(logger.Named("plugin"), os.Stderr)}
	if launch.PluginDirs != nil {
		hostOpts = append(hostOpts, pluginhost.WithSearchDirs(launch.PluginDirs...))
	}
	host := pluginhost.New(cfg, hostOpts...)
	defer host.Close()

	var agent monitor.Agent
	if launch.AgentSocket != "" {
		agent = core.GuestAgent()
	}
	err = monitor.Run(ctx, monitor.Options{
		Agent:   agent,
		Probe:   core.HealthProbe,
		Store:   store,
		Launch:  launch,
		PIDFile: filepath.Join(boxDir, "vm.pid"),
		Socket:  filepath.Join(boxDir, "monitor.sock"),
		VMLog:   filepath.Join(boxDir, "vm.log"),
		Ready:   ready,
		Logger:  logger,
		VMM:     func(ctx context.Context) (monitor.VMM, error) { return host.VMM(ctx) },
		OnExit: func(ctx context.Context, b *model.Box) {
			if !b.Config.AutoRemove {
				return
			}
			autoRemove(ctx, cfg, launch.PluginDirs, b.ID, logger)
		},
	})
	if err != nil {
		return err
	}
	return nil
}

// autoRemove removes an auto-remove box after its VM ended on its own.
func autoRemove(ctx context.Context, cfg *config.Config, pluginDirs []string, id string, logger hclog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	// No recovery: the monitor removes its own box and must not repair
	// (or wait for the locks of) every other box of the home.
	opts := []core.Option{core.WithConfig(cfg), core.WithLogger(logger, os.Stderr), core.WithoutRecovery()}
	if pluginDirs != nil {
		opts = append(opts, core.WithPluginDirs(pluginDirs...))
	}
	rt, err := core.Open(ctx, opts...)
	if err != nil {
		logger.Error("auto-remove: open runtime", "error", err)
		return
	}
	defer rt.Close()
	if err := rt.AutoRemove(ctx, id); err != nil {
		logger.Error("auto-remove", "box", id, "error", err)
	}
}

// reportEarly tells the waiting starter why the monitor could not begin.
func reportEarly(ready *os.File, err error) error {
	if ready != nil {
		fmt.Fprintf(ready, "{\"ok\":false,\"error\":%q}\n", err.Error())
		_ = ready.Close()
	}
	return err
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

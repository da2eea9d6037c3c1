// Command boxctl runs OCI images in hardware-isolated micro-VMs ("boxes").
// It is daemonless: each invocation opens the home directory, does its job
// and exits; running boxes are supervised by per-box monitor processes
// (the hidden `boxctl monitor` subcommand).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// Exit codes, as Docker's: the command's own code where there is one.
const (
	exitBoxctlError = 125 // boxctl itself failed
	exitCannotRun   = 126 // the command cannot be invoked
	exitNotFound    = 127 // the command was not found
)

// exitError carries a command's own exit code out of cobra.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// cliGCPercent is the garbage collector's target for a boxctl command:
// most run for milliseconds, and at Go's default (100) listing thousands
// of boxes spent a tenth of its time collecting garbage it would free on
// exit anyway. Box monitors, which live as long as their box, go back to
// the default; $GOGC, when set, wins.
const cliGCPercent = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(cliGCPercent)
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp()
	root := app.rootCommand()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	app.close()
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(os.Stderr, "boxctl: %v\n", err)
	return exitBoxctlError
}

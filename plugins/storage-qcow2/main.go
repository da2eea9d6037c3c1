// Command boxctl-plugin-qcow2 is boxctl's default storage plugin: the
// boxes' writable disks as qcow2 copy-on-write overlays, with snapshots,
// constant-time clones, export and validated import (see internal/store).
//
// Config block (all optional):
//
//	plugin "qcow2" {
//	  config {
//	    cluster_size     = "64KiB"               # cluster size of new overlays
//	    max_virtual_size = "16TiB"               # cap for created, resized and imported disks
//	    mkfs             = "/usr/sbin/mkfs.ext4" # default: found in $PATH or /usr/sbin, /sbin
//	  }
//	}
//
// Test hook: with BOXCTL_QCOW2_CRASH_AT=<op>:<step> in its environment the
// plugin exits with status 99 when it reaches that step (see
// store.CrashPoints); the crash tests use it. Never set it otherwise.
package main

import (
	"os"

	"github.com/boxctl/boxctl/plugins/storage-qcow2/internal/store"
	"github.com/boxctl/boxctl/sdk"
)

func main() {
	logger := sdk.NewLogger("qcow2")
	opts := []store.Option{store.WithLogger(logger)}
	if at := os.Getenv(store.CrashEnv); at != "" {
		opts = append(opts, store.WithCrashHook(func(point string) {
			if point == at {
				logger.Error("crashing on purpose (test hook)", "point", point)
				os.Exit(99)
			}
		}))
	}
	s := store.New(opts...)
	sdk.Serve(sdk.ServeConfig{Disks: s, Snapshots: s, Logger: logger})
}

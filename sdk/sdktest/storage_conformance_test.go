package sdktest_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// noContent accepts every write and read: the storage it is used with
// keeps no content.
type noContent struct{}

func (noContent) Fill(context.Context, sdk.Disk, int64, int64, byte) error   { return nil }
func (noContent) Expect(context.Context, sdk.Disk, int64, int64, byte) error { return nil }

const dumpHelperEnv = "SDKTEST_STORAGE_DUMP_HELPER"

// TestStorageDumpHelper runs the disk suite against recordingStorage,
// which keeps nothing and so fails most checks; TestStorageFailureDump runs
// it in a child process and reads its output.
func TestStorageDumpHelper(t *testing.T) {
	if os.Getenv(dumpHelperEnv) != "1" {
		t.Skip("run by TestStorageFailureDump")
	}
	sdktest.DiskBackendConformance(t, func(*testing.T, string) sdktest.Storage {
		s := &recordingStorage{}
		return sdktest.Storage{Disks: s, Snapshots: s}
	}, sdktest.WithDiskContent(noContent{}))
}

// TestStorageFailureDump: a failing check says what it had set up (its
// steps, the capabilities, what the plugin lists); a passing one says
// nothing; a check needing a missing capability is skipped naming it.
func TestStorageFailureDump(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestStorageDumpHelper$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), dumpHelperEnv+"=1")
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err == nil {
		t.Fatalf("the suite passed against a storage that keeps nothing:\n%s", text)
	}
	for _, want := range []string{
		"--- PASS: TestStorageDumpHelper/Info",
		"--- FAIL: TestStorageDumpHelper/CreateDescribesDisk",
		"storage conformance: TestStorageDumpHelper/CreateDescribesDisk failed; what it had set up:",
		"plugin recording 0.0.1, capabilities [snapshots]",
		"1. Configure with state dir ",
		"2. CreateDisk disk-a of 64 MiB",
		"ListDisks now (1):",
		"disk-a: raw 64 MiB",
		"--- SKIP: TestStorageDumpHelper/ResizeGrows",
		"the plugin lacks capability Resize (implement sdk.Resizer)",
		"the plugin lacks capability Export (implement sdk.Exporter)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the suite's output lacks %q", want)
		}
	}
	if strings.Contains(text, "TestStorageDumpHelper/Info failed") {
		t.Error("a passing check dumped its state")
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}
}

package qemuvmm

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/boxctl/boxctl/guest/vmtest"
	"github.com/boxctl/boxctl/plugins/qemu/internal/qmp"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// TestMeasureMemorySnapshot prints what saving and restoring a 512 MiB
// guest costs, idle and with 400 MiB of its memory dirtied with random
// bytes, for SaveState as it is and for the migration settings it does
// not use: QEMU's default bandwidth cap, and zlib compression. (multifd
// needs socket channels, impossible over the single fd QEMU's syscall
// filter leaves; x-ignore-shared needs file-backed guest RAM.) It
// measures only: run it with BOXCTL_MEASURE=1.
func TestMeasureMemorySnapshot(t *testing.T) {
	if os.Getenv("BOXCTL_MEASURE") == "" {
		t.Skip("a measurement: set BOXCTL_MEASURE=1")
	}
	ctx := context.Background()
	dir := shortDir(t)
	root := filepath.Join(dir, "root.ext4")
	if err := vmtest.MakeRootDisk(ctx, root); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data.ext4")
	blankExt4(t, data, 64)
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := sdk.VMSpec{
		BoxID: "measure", VCPUs: 1, MemoryMiB: 512, RunDir: run,
		Network:    sdk.NetworkSpec{Mode: sdk.NetworkNone},
		KernelArgs: guestboot.Default().Args(),
		Disks: []sdk.DiskSpec{
			{Path: root, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
			{Path: data, Format: "raw", Role: sdk.DiskRoleWritable},
		},
	}
	l := launch(t, spec)
	c := l.agent(ctx)
	vm := l.control()
	qmpSock := filepath.Join(run, "qmp.sock")
	n := 0
	next := func() string { n++; return filepath.Join(dir, "state"+string(rune('a'+n))) }

	// raw saves with the given parameters and capabilities, as SaveState
	// does but without its settings.
	raw := func(params map[string]any, caps []map[string]any) (time.Duration, int64) {
		t.Helper()
		q, err := qmp.Dial(ctx, qmpSock)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		if caps != nil {
			if _, err := q.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := q.Execute(ctx, "migrate-set-parameters", params); err != nil {
			t.Fatal(err)
		}
		path := next()
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		started := time.Now()
		if _, err := q.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "m"}, f); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:m"}); err != nil {
			t.Fatal(err)
		}
		if err := waitMigration(ctx, ctx, q); err != nil {
			t.Fatal(err)
		}
		took := time.Since(started)
		synced := time.Now()
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		t.Logf("  (fsync of that file afterwards: %s)", time.Since(synced).Round(time.Millisecond))
		st, _ := f.Stat()
		if caps != nil {
			for _, c := range caps {
				c["state"] = false
			}
			if _, err := q.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
				t.Fatal(err)
			}
		}
		return took, st.Size()
	}
	// cycle resumes and pauses the VM between saves: cont reactivates the
	// disks a completed migration left inactive.
	cycle := func() {
		t.Helper()
		if err := l.vmm.Resume(ctx, vm); err != nil {
			t.Fatal(err)
		}
		if err := l.vmm.Pause(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	measure := func(label string) string {
		t.Helper()
		if err := l.vmm.Pause(ctx, vm); err != nil {
			t.Fatal(err)
		}
		path := next()
		started := time.Now()
		saved, err := l.vmm.SaveState(ctx, vm, path)
		if err != nil {
			t.Fatalf("SaveState: %v%s", err, l.diag())
		}
		t.Logf("%s: SaveState (max-bandwidth unlimited) %s, %d MiB", label, time.Since(started).Round(time.Millisecond), saved.Size>>20)
		cycle()
		d, size := raw(map[string]any{"max-bandwidth": int64(1) << 40}, nil)
		t.Logf("%s: unlimited, without SaveState's fsync %s, %d MiB", label, d.Round(time.Millisecond), size>>20)
		cycle()
		d, size = raw(map[string]any{"max-bandwidth": 128 << 20}, nil)
		t.Logf("%s: QEMU's default 128 MiB/s cap %s, %d MiB", label, d.Round(time.Millisecond), size>>20)
		cycle()
		d, size = raw(map[string]any{"max-bandwidth": int64(1) << 40, "compress-level": 1, "compress-threads": 2},
			[]map[string]any{{"capability": "compress", "state": true}})
		t.Logf("%s: zlib level 1, 2 threads %s, %d MiB", label, d.Round(time.Millisecond), size>>20)
		if err := l.vmm.Resume(ctx, vm); err != nil {
			t.Fatal(err)
		}
		return path
	}
	restore := func(label, state string) {
		t.Helper()
		b, _ := os.ReadFile(state) // in the page cache, as a fresh checkpoint is
		_ = b
		inputs, err := l.vmm.StateInputs(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		r := filepath.Join(dir, "r-"+filepath.Base(state))
		if err := os.Mkdir(r, 0o700); err != nil {
			t.Fatal(err)
		}
		s := spec
		s.RunDir = r
		// A copy of the disk: the source holds its disk's lock.
		disk := filepath.Join(r, "data.ext4")
		runTool(t, "cp", "--sparse=always", data, disk)
		s.Disks = []sdk.DiskSpec{spec.Disks[0], {Path: disk, Format: "raw", Role: sdk.DiskRoleWritable}}
		s.Restore = &sdk.RestoreSpec{Path: state, Inputs: inputs}
		if err := l.vmm.Pause(ctx, vm); err != nil {
			t.Fatal(err)
		}
		started := time.Now()
		l2 := launch(t, s)
		c2 := l2.agent(ctx)
		t.Logf("%s: restore, Plan to agent ready: %s", label, time.Since(started).Round(time.Millisecond))
		_ = c2.Close()
		l2.kill()
		if err := l.vmm.Resume(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}

	idle := measure("idle 512 MiB guest")
	restore("idle", idle)
	fill := time.Now()
	guestRun(t, ctx, c, "mkdir -p /mnt/m && mount -t tmpfs -o size=450m tmpfs /mnt/m && dd if=/dev/urandom of=/mnt/m/x bs=1M count=400 2>/dev/null")
	t.Logf("400 MiB of random bytes written in the guest in %s", time.Since(fill).Round(time.Millisecond))
	dirty := measure("400 MiB dirtied")
	restore("400 MiB dirtied", dirty)
}

package state

import (
	"reflect"
	"testing"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/internal/proc"
)

func TestBoxRecordRoundTrip(t *testing.T) {
	now := time.Unix(1700000000, 123456789).UTC()
	full := &model.Box{
		ID: "id", Name: "name", CreatedAt: now,
		Config: model.BoxConfig{
			Image: "alpine", Entrypoint: []string{}, Cmd: []string{"sh", "-c", "x"}, Env: []string{"A=1"},
			WorkingDir: "/w", User: "1000:1000", CPUs: 2, MemoryMiB: 512, DiskSize: 1 << 30, AutoRemove: true, Detach: true,
			Labels: map[string]string{"k": "v"}, Platform: "linux/arm64",
			Ports:             []model.PortMapping{{HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80, Protocol: "tcp"}},
			AllowHostLoopback: true,
			Health:            &model.HealthCheck{Cmd: []string{"true"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 3, StartPeriod: 4 * time.Second},
		},
		Status: model.StatusRunning,
		Run: &model.Run{ID: "r", Detached: true, Owner: proc.Ident{PID: 1, StartTicks: 2, BootID: "b"}, Monitor: proc.Ident{PID: 3, StartTicks: 4, BootID: "b"},
			VM: proc.Ident{PID: 5, StartTicks: 6, BootID: "b"}, Handle: []byte{1, 2}, VMM: "qemu", AgentSocket: "/a", ConsoleLog: "/c", StartedAt: now,
			Exit: &model.Exit{Code: 137, Signal: 9, Reason: "killed", At: now}, StateFile: "/s",
			Pause: &model.Pause{Cause: model.PauseIOError, Reason: "no space left on device", Device: "vdb", At: now}},
		ImageDigest: "sha256:x", Image: &model.ImageConfig{Entrypoint: []string{"/e"}, Cmd: []string{"c"}, Env: []string{"P=1"}, WorkingDir: "/w", User: "u", StopSignal: "SIGTERM"}, DiskID: "d", DiskCreated: true, ClonedFrom: "src", ClonedSnapshot: "s1", Error: "e",
		Health:  model.Health{Status: "healthy", FailingStreak: 1, LastOutput: "ok", LastCheck: now},
		Pending: "removing", SandboxUID: 0x70000003,
	}
	for _, b := range []*model.Box{full, {ID: "min", Name: "min"}} {
		v, err := encodeBox(b)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeBox(v)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, b) {
			t.Fatalf("round trip changed the record:\n got %+v\nwant %+v", got, b)
		}
	}
	// nil Entrypoint (use the image's) and empty Entrypoint (clear it) differ.
	v, _ := encodeBox(&model.Box{ID: "x", Name: "x"})
	if got, _ := decodeBox(v); got.Config.Entrypoint != nil || got.Config.Cmd != nil {
		t.Fatal("nil entrypoint/cmd came back non-nil")
	}
}

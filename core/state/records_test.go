package state

import (
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state/statepb"
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
			AllowHostLoopback: true, NetworkMode: "user", AllowNet: []string{"example.com:443", "10.0.0.0/8"}, Hostname: "web-1",
			Mounts: []model.Mount{{Kind: model.MountBind, Source: "/srv/data", Target: "/data", ReadOnly: true}, {Kind: model.MountVolume, Source: "cache", Target: "/var/cache"}},
			Health: &model.HealthCheck{Cmd: []string{"true"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 3, StartPeriod: 4 * time.Second},
		},
		Status: model.StatusRunning,
		Run: &model.Run{ID: "r", Detached: true, Owner: proc.Ident{PID: 1, StartTicks: 2, BootID: "b"}, Monitor: proc.Ident{PID: 3, StartTicks: 4, BootID: "b"},
			VM: proc.Ident{PID: 5, StartTicks: 6, BootID: "b"}, Handle: []byte{1, 2}, VMM: "qemu", AgentSocket: "/a", ConsoleLog: "/c", StartedAt: now,
			Exit: &model.Exit{Code: 137, Signal: 9, Reason: "killed", At: now}, StateFile: "/s",
			Pause: &model.Pause{Cause: model.PauseIOError, Reason: "no space left on device", Device: "vdb", At: now}},
		ImageDigest: "sha256:x", Image: &model.ImageConfig{Entrypoint: []string{"/e"}, Cmd: []string{"c"}, Env: []string{"P=1"}, WorkingDir: "/w", User: "u", StopSignal: "SIGTERM"}, DiskID: "d", DiskCreated: true, ClonedFrom: "src", ClonedSnapshot: "s1", Error: "e",
		Health:  model.Health{Status: "healthy", FailingStreak: 1, LastOutput: "ok", LastCheck: now},
		Pending: "removing", SandboxUID: 0x70000003, VMM: "libkrun",
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

// decodeBoxWire must give what the generated decoder gives on every
// record it accepts, and accept every record encodeBox writes (else ls
// and every command fall back to the slow path unnoticed). Truncated and
// corrupted records probe the edges: there it may refuse (the generated
// decoder then decides), never differ.
func TestWireDecoderAgreesWithGenerated(t *testing.T) {
	now := time.Unix(1700000000, 123456789).UTC()
	full := &model.Box{
		ID: "id", Name: "name", CreatedAt: now,
		Config: model.BoxConfig{
			Image: "alpine", Entrypoint: []string{}, Cmd: []string{"sh", "-c", "x"}, Env: []string{"A=1", "B=2"},
			WorkingDir: "/w", User: "1000:1000", CPUs: 2, MemoryMiB: 512, DiskSize: 1 << 40, AutoRemove: true, Detach: true,
			Labels: map[string]string{"k": "v", "k2": ""}, Platform: "linux/arm64",
			Ports:             []model.PortMapping{{HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80, Protocol: "tcp"}, {HostPort: 53, GuestPort: 53, Protocol: "udp"}},
			AllowHostLoopback: true, NetworkMode: "user", AllowNet: []string{"example.com:443", "10.0.0.0/8"}, Hostname: "web-1",
			Mounts: []model.Mount{{Kind: model.MountVolume, Source: "v1", Target: "/v"}, {Kind: model.MountBind, Source: "/h", Target: "/g"}},
			Health: &model.HealthCheck{Cmd: []string{"true"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 3, StartPeriod: 4 * time.Second},
		},
		Status: model.StatusPaused,
		Run: &model.Run{ID: "r", Owner: proc.Ident{PID: 1, StartTicks: 2, BootID: "b"}, Monitor: proc.Ident{PID: 3, StartTicks: 4, BootID: "b"},
			VM: proc.Ident{PID: 1 << 22, StartTicks: 1 << 40, BootID: "b"}, Handle: []byte{0, 2}, VMM: "qemu", AgentSocket: "/a", ConsoleLog: "/c", StartedAt: now,
			Exit: &model.Exit{Code: -1, Signal: 9, Reason: "killed", At: now}, StateFile: "/s", RestoredFrom: "tpl", Accelerator: "tcg",
			Pause: &model.Pause{Cause: model.PauseIOError, Reason: "no space", Device: "vdb", At: now}},
		ImageDigest: "sha256:x", Image: &model.ImageConfig{Entrypoint: []string{"/e"}, Cmd: []string{"c"}, Env: []string{"P=1"}, WorkingDir: "/w", User: "u", StopSignal: "SIGTERM"},
		DiskID: "d", DiskCreated: true, ClonedFrom: "src", ClonedSnapshot: "s1", Error: "e",
		Health:  model.Health{Status: "healthy", FailingStreak: 1, LastOutput: "ok", LastCheck: now},
		Pending: "removing", SandboxUID: 0x70000003, VMM: "libkrun",
	}
	generated := func(v []byte) (*model.Box, error) {
		var pb statepb.Box
		if err := proto.Unmarshal(v, &pb); err != nil {
			return nil, err
		}
		return boxFromPB(&pb), nil
	}
	var inputs [][]byte
	for _, b := range []*model.Box{full, {ID: "min", Name: "min"}, {ID: "r", Run: &model.Run{}, Config: model.BoxConfig{Cmd: []string{}}}} {
		v, err := encodeBox(b)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := decodeBoxWire(v)
		if !ok {
			t.Fatalf("the wire decoder refused a record encodeBox wrote (%s)", b.ID)
		}
		if !reflect.DeepEqual(got, b) {
			t.Fatalf("wire decoder changed the record:\n got %+v\nwant %+v", got, b)
		}
		inputs = append(inputs, v)
	}
	v := inputs[0]
	for i := 0; i < len(v); i++ {
		inputs = append(inputs, v[:i])
		for _, x := range []byte{0x00, 0x80, 0xff, v[i] ^ 0x01, v[i] ^ 0x07} {
			c := append([]byte{}, v...)
			c[i] = x
			inputs = append(inputs, c)
		}
	}
	inputs = append(inputs, append(append([]byte{}, v...), v...))                  // a record twice: proto merges
	inputs = append(inputs, append(append([]byte{}, v...), 0xa2, 0x06, 0x01, 'x')) // unknown field 100
	for i, in := range inputs {
		got, ok := decodeBoxWire(in)
		if !ok {
			continue
		}
		want, err := generated(in)
		if err != nil {
			t.Fatalf("input %d: the wire decoder accepted what the generated one refuses (%v): %x", i, err, in)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("input %d (%x): decoders differ:\n wire      %+v\n generated %+v", i, in, got, want)
		}
	}
}

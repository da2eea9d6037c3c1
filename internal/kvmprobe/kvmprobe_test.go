package kvmprobe

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProbeThisHost runs the real probe on this machine's /dev/kvm. The
// answer depends on the host; what must hold everywhere is that it comes
// back within the bound plus slack, with a reason.
func TestProbeThisHost(t *testing.T) {
	if _, err := os.Stat(DefaultDevice); err != nil {
		t.Skipf("no %s: %v", DefaultDevice, err)
	}
	start := time.Now()
	r := Probe(context.Background())
	elapsed := time.Since(start)
	t.Logf("usable=%v took=%v reason=%q", r.Usable, r.Took, r.Reason)
	if r.Reason == "" {
		t.Error("no reason")
	}
	if limit := DefaultBound + time.Second; elapsed > limit {
		t.Errorf("probe took %v, more than bound+slack %v", elapsed, limit)
	}
	if r.Took <= 0 || r.Took > elapsed {
		t.Errorf("Took = %v, measured %v", r.Took, elapsed)
	}
	if !r.Usable && !strings.Contains(r.Reason, DefaultDevice) && !strings.Contains(r.Reason, "KVM") {
		t.Errorf("reason %q names neither the device nor KVM", r.Reason)
	}
}

// TestProbeBoundIsEnforced gives the guest a bound no host meets, so the
// watchdog must stop KVM_RUN (or the probe fail earlier with a reason).
func TestProbeBoundIsEnforced(t *testing.T) {
	if _, err := os.Stat(DefaultDevice); err != nil {
		t.Skipf("no %s: %v", DefaultDevice, err)
	}
	start := time.Now()
	r := Probe(context.Background(), WithBound(time.Nanosecond))
	elapsed := time.Since(start)
	t.Logf("usable=%v took=%v reason=%q", r.Usable, r.Took, r.Reason)
	if r.Usable {
		t.Errorf("usable with a 1 ns bound: %q", r.Reason)
	}
	if elapsed > time.Second {
		t.Errorf("probe took %v with a 1 ns bound", elapsed)
	}
}

// TestProbeCanceled: a canceled context stops the probe with that reason.
func TestProbeCanceled(t *testing.T) {
	if _, err := os.Stat(DefaultDevice); err != nil {
		t.Skipf("no %s: %v", DefaultDevice, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := Probe(ctx, WithBound(time.Minute))
	t.Logf("usable=%v took=%v reason=%q", r.Usable, r.Took, r.Reason)
	if r.Took > 5*time.Second {
		t.Errorf("canceled probe took %v", r.Took)
	}
	if !r.Usable && r.Reason == "" {
		t.Error("no reason")
	}
}

func TestProbeMissingDevice(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "kvm")
	r := Probe(context.Background(), WithDevice(dev))
	if r.Usable || !strings.Contains(r.Reason, dev) || !strings.Contains(r.Reason, "kvm module is not loaded") {
		t.Errorf("missing device: %+v", r)
	}
}

func TestProbeNotKVM(t *testing.T) {
	r := Probe(context.Background(), WithDevice("/dev/null"))
	if r.Usable || !strings.Contains(r.Reason, "KVM_GET_API_VERSION on /dev/null") || !strings.Contains(r.Reason, "not a KVM device") {
		t.Errorf("/dev/null: %+v", r)
	}
}

func TestProbePermission(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root opens any file")
	}
	dev := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(dev, nil, 0); err != nil {
		t.Fatal(err)
	}
	r := Probe(context.Background(), WithDevice(dev))
	if r.Usable || !strings.Contains(r.Reason, "kvm group") {
		t.Errorf("unreadable device: %+v", r)
	}
}

// With a bound any KVM meets, even an emulated one, the guest must run to
// its end: its loop done (ecx 0) and its OUT on the probe's port. The time
// it took is the number DefaultBound was chosen from (about 200 ms on the
// development hosts, whose KVM emulates guest code).
func TestProbeRunsTheGuestToItsEnd(t *testing.T) {
	if _, err := os.Stat(DefaultDevice); err != nil {
		t.Skipf("no %s: %v", DefaultDevice, err)
	}
	r := Probe(context.Background(), WithBound(30*time.Second))
	t.Logf("usable=%v took=%v reason=%q", r.Usable, r.Took, r.Reason)
	if !r.Usable || !strings.Contains(r.Reason, "KVM ran the test guest in") {
		t.Errorf("with a 30 s bound: %+v", r)
	}
}

func TestOnceProbesOnce(t *testing.T) {
	calls := 0
	o := NewOnce(func(context.Context) Result { calls++; return Result{Reason: "no"} })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < 3; i++ {
		if r := o.Result(ctx); r.Reason != "no" {
			t.Fatalf("Result = %+v", r)
		}
	}
	if calls != 1 {
		t.Errorf("probe ran %d times, want 1", calls)
	}
}

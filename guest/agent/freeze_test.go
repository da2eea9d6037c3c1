package agent_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/boxctl/boxctl/guest/agent"
)

// loopExt4 mounts a fresh ext4 image through a loop device (what FIFREEZE needs: a real
// block filesystem; tmpfs cannot be frozen) and returns its mount point. Cleanup thaws and
// unmounts it whatever the test did.
func loopExt4(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("freezing a filesystem needs root (as the agent has in the guest)")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.ext4"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{{"truncate", "-s", "16M", img}, {"mkfs.ext4", "-q", "-F", img}, {"mount", "-o", "loop", img, mnt}} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s (the freeze tests loop-mount an ext4 image: they need e2fsprogs and loop devices)", argv, err, out)
		}
	}
	t.Cleanup(func() {
		if fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
			_ = unix.IoctlSetInt(fd, 0xC0045878, 0) // FITHAW
			unix.Close(fd)
		}
		// A write the freeze blocked may still be finishing: retry, then detach.
		var out []byte
		var err error
		for range 50 {
			if out, err = exec.Command("umount", mnt).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = exec.Command("umount", "-l", mnt).Run()
		t.Errorf("umount %s: %v: %s", mnt, err, out)
	})
	return mnt
}

// startWrite creates a file in dir in the background; the channel closes when the write is
// done. On a frozen filesystem it blocks in the kernel until the thaw.
func startWrite(t *testing.T, dir, name string) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := os.WriteFile(filepath.Join(dir, name), []byte("data"), 0o644); err != nil {
			t.Errorf("write %s: %v", name, err)
		}
	}()
	return done
}

func blocked(done <-chan struct{}, d time.Duration) bool {
	select {
	case <-done:
		return false
	case <-time.After(d):
		return true
	}
}

func finishes(done <-chan struct{}, d time.Duration) bool { return !blocked(done, d) }

func TestQuiesceLeaseExpiresAndThawsByItself(t *testing.T) {
	mnt := loopExt4(t)
	f := newFixture(t, func(c *agent.Config) { c.WritableMount = mnt })
	const lease = 700 * time.Millisecond
	fr, err := f.client.Quiesce(ctxT(t), lease)
	if err != nil {
		t.Fatal(err)
	}
	if fr.Renewed || fr.Lease != lease || fr.Sync <= 0 {
		t.Errorf("quiesce = %+v; want a fresh freeze with the %s lease and its sync time", fr, lease)
	}
	frozeAt := time.Now()
	write := startWrite(t, mnt, "during")
	if !blocked(write, 300*time.Millisecond) {
		t.Fatal("a write went through right after Quiesce: the filesystem is not frozen")
	}
	// No Thaw: the lease ends the freeze and the write goes through.
	if !finishes(write, 30*time.Second) {
		t.Fatal("the write was still blocked 30s after the lease ended: the agent did not thaw by itself")
	}
	if took := time.Since(frozeAt); took < lease-100*time.Millisecond {
		t.Errorf("the write went through %s after the freeze, before the %s lease ended", took, lease)
	}
	th, err := f.client.Thaw(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !th.LeaseExpired || th.Frozen < lease-50*time.Millisecond {
		t.Errorf("thaw after the lease ended = %+v; want LeaseExpired and Frozen ≈ %s", th, lease)
	}
	th, err = f.client.Thaw(ctxT(t))
	if err != nil || th.LeaseExpired || th.Frozen != 0 {
		t.Errorf("second thaw = %+v, %v; want nothing to report", th, err)
	}
}

func TestQuiesceRenewsTheLeaseAndThawEndsIt(t *testing.T) {
	mnt := loopExt4(t)
	f := newFixture(t, func(c *agent.Config) { c.WritableMount = mnt })
	const lease = 800 * time.Millisecond
	if _, err := f.client.Quiesce(ctxT(t), lease); err != nil {
		t.Fatal(err)
	}
	write := startWrite(t, mnt, "during")
	time.Sleep(lease / 2)
	fr, err := f.client.Quiesce(ctxT(t), lease)
	if err != nil {
		t.Fatal(err)
	}
	if !fr.Renewed || fr.Sync != 0 || fr.Lease != lease {
		t.Errorf("second quiesce = %+v; want a renewal", fr)
	}
	// Past the first lease's end, inside the renewed one: still frozen.
	if !blocked(write, lease*3/4) {
		t.Fatal("the write went through before the renewed lease ended: the renewal did not extend the freeze")
	}
	th, err := f.client.Thaw(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if th.LeaseExpired || th.Frozen < lease {
		t.Errorf("thaw = %+v; want the freeze ended by Thaw after more than %s", th, lease)
	}
	if !finishes(write, 30*time.Second) {
		t.Fatal("the write was still blocked after Thaw")
	}
	// The cancelled lease must not fire later (thawing or reporting an expiry).
	time.Sleep(lease)
	if th, err := f.client.Thaw(ctxT(t)); err != nil || th.LeaseExpired || th.Frozen != 0 {
		t.Errorf("thaw after the lease's end = %+v, %v; want nothing to report", th, err)
	}
}

func TestQuiesceRefusesALeaseOverTheMaximum(t *testing.T) {
	mnt := loopExt4(t)
	f := newFixture(t, func(c *agent.Config) { c.WritableMount = mnt })
	_, err := f.client.Quiesce(ctxT(t), agent.MaxFreezeLease+time.Second)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("quiesce with a 61s lease: %v; want InvalidArgument", err)
	}
	if !finishes(startWrite(t, mnt, "after"), 10*time.Second) {
		t.Fatal("a refused Quiesce left the filesystem frozen")
	}
}

// A shutdown of a frozen guest syncs its disks: it must thaw first rather than wait out
// the lease.
func TestShutdownThawsAFrozenFilesystem(t *testing.T) {
	mnt := loopExt4(t)
	f := newFixture(t, func(c *agent.Config) {
		c.WritableMount = mnt
		c.Shutdown = func(ctx context.Context, grace time.Duration) (func(), error) {
			return nil, os.WriteFile(filepath.Join(mnt, "flushed"), []byte("x"), 0o644)
		}
	})
	if _, err := f.client.Quiesce(ctxT(t), agent.MaxFreezeLease); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.client.Shutdown(ctx, 0); err != nil {
		t.Fatalf("shutdown of a frozen guest: %v", err)
	}
}

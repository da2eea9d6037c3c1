package proc

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestSelfIsAlive(t *testing.T) {
	id, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if id.PID != os.Getpid() || id.StartTicks == 0 || id.BootID == "" {
		t.Fatalf("bad identity %+v", id)
	}
	if !id.Alive() {
		t.Fatal("self not alive")
	}
}

func TestReusedPIDIsNotAlive(t *testing.T) {
	id, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	other := id
	other.StartTicks++
	if other.Alive() {
		t.Fatal("identity with another start time reported alive: PID reuse would go unnoticed")
	}
	otherBoot := id
	otherBoot.BootID = "00000000-0000-0000-0000-000000000000"
	if otherBoot.Alive() {
		t.Fatal("identity from another boot reported alive")
	}
}

func TestWaitExitSeesExitAndZombie(t *testing.T) {
	cmd := exec.Command("sleep", "0.2")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	id, err := Of(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Not reaped yet: the child becomes a zombie, which must count as gone.
	if err := WaitExit(ctx, id); err != nil {
		t.Fatalf("WaitExit: %v", err)
	}
	if id.Alive() {
		t.Fatal("exited child still alive")
	}
	_ = cmd.Wait()
}

func TestWaitExitHonoursContext(t *testing.T) {
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	id, err := Of(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := WaitExit(ctx, id); err == nil {
		t.Fatal("WaitExit returned nil for a live process")
	}
}

// TestReadStatOfSelf cross-checks ReadStat with what the process knows of
// itself: its parent, and that it has run and is resident.
func TestReadStatOfSelf(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.PPID != os.Getppid() {
		t.Errorf("PPID = %d, want %d", st.PPID, os.Getppid())
	}
	if st.State != 'R' && st.State != 'S' {
		t.Errorf("state = %c, want R or S", st.State)
	}
	if st.RSS() == 0 || st.StartTicks == 0 {
		t.Errorf("RSS %d, start %d: want both above zero", st.RSS(), st.StartTicks)
	}
	if ParentOf(os.Getpid()) != os.Getppid() {
		t.Errorf("ParentOf(self) = %d, want %d", ParentOf(os.Getpid()), os.Getppid())
	}
	if _, err := ReadStat(1 << 30); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadStat of no process: %v, want fs.ErrNotExist", err)
	}
}

package agent

import (
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reaper starts processes and delivers each one's exit status to whoever started it.
//
// As PID 1 (or a child subreaper) the agent inherits every orphaned process in the guest and
// must reap them, or they stay zombies forever. A second wait4(-1) loop next to per-process
// waits would steal statuses from Exec, so in reap-all mode there is exactly one waiter: a
// SIGCHLD-driven loop that reaps every child and hands the status to the registered starter,
// if any. Starting a process and registering its PID happen under the same lock the loop
// holds while reaping, so a child that exits immediately cannot be reaped before it is known.
//
// Processes must be started through the Reaper (not os/exec) while reap-all is active.
type Reaper struct {
	all     bool
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
	sigs    chan os.Signal
	done    chan struct{}
	stopped sync.WaitGroup
}

// NewReaper returns a Reaper. With reapAll it reaps every child of this process (use it in
// PID 1 or a child subreaper; call Close when done); otherwise it waits only for the
// processes it starts and leaves other children alone.
func NewReaper(reapAll bool) *Reaper {
	r := &Reaper{all: reapAll, waiters: map[int]chan unix.WaitStatus{}}
	if reapAll {
		r.sigs = make(chan os.Signal, 1)
		r.done = make(chan struct{})
		signal.Notify(r.sigs, unix.SIGCHLD)
		r.stopped.Add(1)
		go r.loop()
	}
	return r
}

// Close stops the reap-all loop.
func (r *Reaper) Close() {
	if !r.all {
		return
	}
	signal.Stop(r.sigs)
	close(r.done)
	r.stopped.Wait()
}

func (r *Reaper) loop() {
	defer r.stopped.Done()
	for {
		r.reapAll()
		select {
		case <-r.sigs:
		case <-r.done:
			return
		}
	}
}

func (r *Reaper) reapAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiters[pid]; ok {
			ch <- ws
			delete(r.waiters, pid)
		}
	}
}

// Start starts argv0 with argv and attr (see syscall.ForkExec) and returns its PID and a
// channel that receives its wait status once.
func (r *Reaper) Start(argv0 string, argv []string, attr *syscall.ProcAttr) (int, <-chan unix.WaitStatus, error) {
	ch := make(chan unix.WaitStatus, 1)
	if r.all {
		r.mu.Lock()
		defer r.mu.Unlock()
		pid, err := syscall.ForkExec(argv0, argv, attr)
		if err != nil {
			return 0, nil, err
		}
		r.waiters[pid] = ch
		return pid, ch, nil
	}
	pid, err := syscall.ForkExec(argv0, argv, attr)
	if err != nil {
		return 0, nil, err
	}
	go func() {
		for {
			var ws unix.WaitStatus
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				// Cannot happen for our own child unless someone else reaped it; report it as
				// killed rather than hang the exec forever.
				ws = unix.WaitStatus(unix.SIGKILL)
			}
			ch <- ws
			return
		}
	}()
	return pid, ch, nil
}

package containerd

import (
	"context"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/fifo"

	"github.com/boxctl/boxctl/core"
)

// process is a containerd process of a task: the init process (the
// container's command) or an exec. Both run in the container's box over the
// guest agent; the shim holds their streams.
type process struct {
	id       string // exec ID; "" for the init process
	argv     []string
	env      []string
	cwd      string
	user     string
	terminal bool
	stdin    string
	stdout   string
	stderr   string

	signals chan int
	resize  chan core.TermSize

	mu         sync.Mutex
	started    bool
	exited     bool
	pid        uint32
	exitStatus uint32
	exitedAt   time.Time
	stdinPipe  io.Closer // the shim's own write end of the stdin FIFO (openIO)
	cancel     context.CancelFunc
	done       chan struct{}
}

func newProcess(id string) *process {
	return &process{
		id:      id,
		signals: make(chan int, 8),
		resize:  make(chan core.TermSize, 4),
		done:    make(chan struct{}),
	}
}

// openIO opens the process's FIFOs. Writers open in the background (the
// fifo package blocks the first write until containerd's reader is there),
// so a missing reader cannot hang Start.
//
// The shim holds a write end of the stdin FIFO itself (stdinKeep), as
// runc's shim does: the command's stdin ends when CloseIO closes that end
// and every client's is closed too, after the reader has drained what they
// wrote. Closing the read end instead would drop input still in the FIFO
// (ctr writes its stdin and calls CloseIO right away).
func (p *process) openIO(ctx context.Context) (stdin io.ReadCloser, stdinKeep, stdout, stderr io.WriteCloser, err error) {
	defer func() {
		if err != nil {
			for _, c := range []io.Closer{stdin, stdinKeep, stdout, stderr} {
				if c != nil {
					c.Close()
				}
			}
		}
	}()
	if p.stdin != "" {
		if stdin, err = fifo.OpenFifo(ctx, p.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0); err != nil {
			return
		}
		if stdinKeep, err = fifo.OpenFifo(ctx, p.stdin, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err != nil {
			return
		}
	}
	if p.stdout != "" {
		if stdout, err = fifo.OpenFifo(ctx, p.stdout, syscall.O_WRONLY, 0); err != nil {
			return
		}
	}
	if p.stderr != "" && !p.terminal {
		if stderr, err = fifo.OpenFifo(ctx, p.stderr, syscall.O_WRONLY, 0); err != nil {
			return
		}
	}
	return
}

// run runs the process in the box until it ends and records how it ended;
// onExit is called once it has.
func (p *process) run(rt *core.Runtime, boxID string, onExit func(*process)) error {
	ctx, cancel := context.WithCancel(context.Background())
	stdin, stdinKeep, stdout, stderr, err := p.openIO(ctx)
	if err != nil {
		cancel()
		return err
	}
	opts := core.ExecOptions{
		Argv: p.argv, Env: p.env, WorkingDir: p.cwd, User: p.user,
		Signals: p.signals, Resize: p.resize,
	}
	if stdin != nil {
		opts.Stdin = stdin
	}
	if stdout != nil {
		opts.Stdout = stdout
	} else {
		opts.Stdout = io.Discard
	}
	if stderr != nil {
		opts.Stderr = stderr
	} else if !p.terminal {
		opts.Stderr = io.Discard
	}
	if p.terminal {
		opts.TTY = &core.TermSize{Rows: 24, Cols: 80}
	}
	p.mu.Lock()
	p.started, p.cancel = true, cancel
	if stdinKeep != nil {
		p.stdinPipe = stdinKeep
	}
	p.mu.Unlock()
	go func() {
		res, err := rt.Exec(ctx, boxID, opts)
		status := uint32(res.ExitCode)
		if err != nil {
			// The box went away or the agent failed: like a process
			// killed by SIGKILL, which is what containerd reports for
			// a runc task whose container vanished.
			status = 128 + uint32(syscall.SIGKILL)
		}
		for _, c := range []io.Closer{stdout, stderr, stdin} {
			if c != nil {
				c.Close()
			}
		}
		p.closeStdin()
		cancel()
		p.setExited(status)
		onExit(p)
	}()
	return nil
}

func (p *process) setExited(status uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return
	}
	p.exited, p.exitStatus, p.exitedAt = true, status, time.Now()
	close(p.done)
}

func (p *process) snapshot() (started, exited bool, status uint32, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started, p.exited, p.exitStatus, p.exitedAt
}

func (p *process) setPID(pid uint32) {
	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
}

func (p *process) getPID() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

func (p *process) closeStdin() {
	p.mu.Lock()
	c := p.stdinPipe
	p.stdinPipe = nil
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

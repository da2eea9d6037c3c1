package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/boxctl/boxctl/guest/proto/agentv1"
)

const (
	exitNotFound      = 127
	exitNotExecutable = 126
	defaultKillGrace  = 2 * time.Second
)

// execSpec is an ExecStart resolved against the box root.
type execSpec struct {
	argv    []string
	path    string // argv[0] as found in PATH, inside the box root
	env     []string
	dir     string
	user    execUser
	tty     *agentv1.TerminalSize
	stdin   bool
	timeout time.Duration
	grace   time.Duration
	detach  bool

	// When set, the program cannot be started: report this like a shell would.
	failCode int
	failMsg  string
}

// Exec implements agentv1.AgentServer.
func (a *Agent) Exec(stream agentv1.Agent_ExecServer) error {
	first, err := stream.Recv()
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "exec: read start message: %v", err)
	}
	start := first.GetStart()
	if start == nil {
		return status.Error(codes.InvalidArgument, "exec: the first message must be start")
	}
	if err := a.requireRoot(); err != nil {
		return err
	}
	spec, err := a.prepare(start)
	if err != nil {
		return err
	}
	out := &execSender{stream: stream}
	if spec.failCode != 0 {
		return out.fail(spec.failCode, spec.failMsg)
	}
	if spec.detach {
		return a.runDetached(spec, out)
	}
	return a.run(stream, spec, out)
}

func (a *Agent) prepare(start *agentv1.ExecStart) (*execSpec, error) {
	argv := start.GetArgv()
	if len(argv) == 0 || argv[0] == "" {
		return nil, status.Error(codes.InvalidArgument, "exec: argv is empty")
	}
	for _, kv := range start.GetEnv() {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, status.Errorf(codes.InvalidArgument, "exec: environment entry %q is not KEY=VALUE", kv)
		}
	}
	spec := &execSpec{
		argv:    argv,
		tty:     start.GetTty(),
		stdin:   start.GetStdin(),
		timeout: start.GetTimeout().AsDuration(),
		grace:   start.GetKillGrace().AsDuration(),
		detach:  start.GetDetach(),
	}
	if spec.detach && (spec.tty != nil || spec.stdin || spec.timeout != 0) {
		return nil, status.Error(codes.InvalidArgument, "exec: a detached process cannot have a tty, stdin or a timeout")
	}
	if spec.grace <= 0 {
		spec.grace = defaultKillGrace
	}
	if spec.timeout < 0 {
		return nil, status.Error(codes.InvalidArgument, "exec: negative timeout")
	}

	passwd, err := readFileInRoot(a.cfg.Root, "/etc/passwd")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "exec: read /etc/passwd: %v", err)
	}
	group, err := readFileInRoot(a.cfg.Root, "/etc/group")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "exec: read /etc/group: %v", err)
	}
	spec.user, err = resolveUser(start.GetUser(), passwd, group)
	if err != nil {
		code := codes.InvalidArgument
		if errors.Is(err, ErrUnknownUser) {
			code = codes.NotFound
		}
		return nil, status.Errorf(code, "exec: %v", err)
	}

	spec.env = append([]string(nil), start.GetEnv()...)
	if _, ok := lookupEnv(spec.env, "PATH"); !ok {
		spec.env = append(spec.env, "PATH="+DefaultPath)
	}
	if _, ok := lookupEnv(spec.env, "HOME"); !ok {
		spec.env = append(spec.env, "HOME="+spec.user.home)
	}
	if _, ok := lookupEnv(spec.env, "TERM"); !ok && spec.tty != nil {
		spec.env = append(spec.env, "TERM=xterm")
	}

	spec.dir = start.GetWorkingDir()
	if spec.dir == "" {
		spec.dir = "/"
	}
	spec.dir = path.Clean("/" + spec.dir)
	if fi, err := statInRoot(a.cfg.Root, spec.dir); err != nil || !fi.IsDir() {
		return nil, status.Errorf(codes.NotFound, "exec: working directory %s does not exist in the box", spec.dir)
	}

	spec.path, spec.failCode, spec.failMsg = a.lookPath(argv[0], spec.dir, spec.env)
	return spec, nil
}

func lookupEnv(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, _ := strings.Cut(env[i], "="); k == key {
			return v, true
		}
	}
	return "", false
}

// lookPath finds name like a shell does, inside the box root: names with a slash are used as
// they are (relative to dir), others are searched in PATH. It returns the path to execute, or
// an exit code (127 not found, 126 not executable) and the message a shell would print.
func (a *Agent) lookPath(name, dir string, env []string) (string, int, string) {
	executable := func(p string) (found, exec bool) {
		if !path.IsAbs(p) {
			p = path.Join(dir, p)
		}
		fi, err := statInRoot(a.cfg.Root, p)
		if err != nil {
			return false, false
		}
		return true, fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
	}
	if strings.Contains(name, "/") {
		found, exec := executable(name)
		switch {
		case !found:
			return "", exitNotFound, name + ": no such file or directory"
		case !exec:
			return "", exitNotExecutable, name + ": permission denied"
		}
		return name, 0, ""
	}
	pathVar, _ := lookupEnv(env, "PATH")
	nonExec := ""
	for _, d := range strings.Split(pathVar, ":") {
		if d == "" {
			d = "."
		}
		p := path.Join(d, name)
		found, exec := executable(p)
		if exec {
			if !path.IsAbs(p) {
				p = "./" + p
			}
			return p, 0, ""
		}
		if found && nonExec == "" {
			nonExec = p
		}
	}
	if nonExec != "" {
		return "", exitNotExecutable, name + ": permission denied"
	}
	return "", exitNotFound, name + ": command not found"
}

// execSender serialises sends on an Exec stream (gRPC streams allow one sender at a time).
type execSender struct {
	mu     sync.Mutex
	stream agentv1.Agent_ExecServer
}

func (s *execSender) send(m *agentv1.ExecResponse) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stream.Send(m)
}

// fail reports a program that could not be started the way a shell does.
func (s *execSender) fail(code int, msg string) error {
	if err := s.send(&agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Stderr{Stderr: []byte("boxctl: " + msg + "\n")}}); err != nil {
		return err
	}
	return s.send(&agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Exit{Exit: &agentv1.ExecExit{
		ExitCode: int32(code), Duration: durationpb.New(0),
	}}})
}

// stdio is the parent's side of a process's standard streams.
type stdio struct {
	childFiles []*os.File // to pass to the child and close after start
	stdin      *os.File   // where client stdin goes (pipe write end or pty master); nil if none
	ptm        *os.File   // pty master when there is a tty
	stdout     *os.File
	stderr     *os.File // nil with a tty
}

func (s *stdio) closeChild() {
	for _, f := range s.childFiles {
		f.Close()
	}
	s.childFiles = nil
}

func (s *stdio) closeAll() {
	s.closeChild()
	for _, f := range []*os.File{s.stdin, s.stdout, s.stderr, s.ptm} {
		if f != nil {
			f.Close()
		}
	}
}

func newStdio(spec *execSpec) (*stdio, error) {
	s := &stdio{}
	ok := false
	defer func() {
		if !ok {
			s.closeAll()
		}
	}()
	if spec.tty != nil {
		ptm, pts, err := openPTY()
		if err != nil {
			return nil, fmt.Errorf("allocate pty: %w", err)
		}
		s.ptm, s.stdout = ptm, ptm
		s.childFiles = []*os.File{pts, pts, pts}
		if err := setWinsize(ptm, spec.tty); err != nil {
			return nil, err
		}
		if spec.stdin {
			s.stdin = ptm
		}
		ok = true
		return s, nil
	}
	var in *os.File
	if spec.stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		in, s.stdin = r, w
	} else {
		f, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		in = f
	}
	s.childFiles = append(s.childFiles, in)
	for _, dst := range []**os.File{&s.stdout, &s.stderr} {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		*dst = r
		s.childFiles = append(s.childFiles, w)
	}
	ok = true
	return s, nil
}

func (a *Agent) run(stream agentv1.Agent_ExecServer, spec *execSpec, out *execSender) error {
	ctx := stream.Context()
	std, err := newStdio(spec)
	if err != nil {
		return status.Errorf(codes.Internal, "exec: %v", err)
	}
	defer std.closeAll()

	attr := a.procAttr(spec)
	if spec.tty != nil {
		attr.Sys.Setctty = true
		attr.Sys.Ctty = 0
	}
	for _, f := range std.childFiles {
		attr.Files = append(attr.Files, f.Fd())
	}

	begin := time.Now()
	pid, waitCh, err := a.reaper.Start(spec.path, spec.argv, attr)
	std.closeChild()
	if err != nil {
		code := exitNotExecutable
		if errors.Is(err, unix.ENOENT) {
			code = exitNotFound
		}
		a.log.Debug("exec failed to start", "argv", spec.argv, "err", err)
		return out.fail(code, fmt.Sprintf("%s: %v", spec.argv[0], err))
	}
	a.log.Debug("exec started", "pid", pid, "argv", spec.argv)

	exited := make(chan struct{})
	var timedOut atomic.Bool
	killGroup := func(sig unix.Signal) { _ = unix.Kill(-pid, sig) }

	// Once the process is started, every path below must wait for it: the status channel is
	// the only thing that reaps it.
	if err := out.send(&agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Started{Started: &agentv1.ExecStarted{Pid: int32(pid)}}}); err != nil {
		killGroup(unix.SIGKILL)
	}

	// Client gone (cancelled, connection lost): nobody will read the output.
	stopWatch := context.AfterFunc(ctx, func() { killGroup(unix.SIGKILL) })
	defer stopWatch()

	if spec.timeout > 0 {
		t := time.AfterFunc(spec.timeout, func() {
			timedOut.Store(true)
			a.log.Debug("exec timed out", "pid", pid, "timeout", spec.timeout)
			killGroup(unix.SIGTERM)
			select {
			case <-exited:
			case <-time.After(spec.grace):
				killGroup(unix.SIGKILL)
			}
		})
		defer t.Stop()
	}

	go a.execInput(stream, spec, std, pid, exited)

	var pumps sync.WaitGroup
	pump := func(f *os.File, stderr bool) {
		defer pumps.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				m := &agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Stdout{Stdout: buf[:n]}}
				if stderr {
					m = &agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Stderr{Stderr: buf[:n]}}
				}
				if out.send(m) != nil {
					killGroup(unix.SIGKILL)
					return
				}
			}
			if err != nil {
				// EOF for pipes, EIO for a pty master once the tty is closed, a deadline
				// error when a background process keeps the stream open after exit.
				return
			}
		}
	}
	pumps.Add(1)
	go pump(std.stdout, false)
	if std.stderr != nil {
		pumps.Add(1)
		go pump(std.stderr, true)
	}

	ws := <-waitCh
	duration := time.Since(begin)
	close(exited)
	drain := time.Now().Add(a.cfg.OutputDrain)
	std.stdout.SetReadDeadline(drain)
	if std.stderr != nil {
		std.stderr.SetReadDeadline(drain)
	}
	pumps.Wait()

	exit := &agentv1.ExecExit{TimedOut: timedOut.Load(), Duration: durationpb.New(duration)}
	if ws.Signaled() {
		exit.Signal = int32(ws.Signal())
		exit.ExitCode = 128 + exit.Signal
	} else {
		exit.ExitCode = int32(ws.ExitStatus())
	}
	a.log.Debug("exec exited", "pid", pid, "code", exit.ExitCode, "signal", exit.Signal, "timed_out", exit.TimedOut)
	if err := out.send(&agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Exit{Exit: exit}}); err != nil {
		return err
	}
	return nil
}

// procAttr is how every exec'd process starts: in the box root, as the
// resolved user, in a session of its own.
func (a *Agent) procAttr(spec *execSpec) *syscall.ProcAttr {
	attr := &syscall.ProcAttr{
		Dir: spec.dir,
		Env: spec.env,
		Sys: &syscall.SysProcAttr{
			// A session of its own: the process group can be killed as a whole, and a tty
			// can become its controlling terminal.
			Setsid: true,
		},
	}
	if os.Getuid() == 0 || spec.user.uid != uint32(os.Getuid()) || spec.user.gid != uint32(os.Getgid()) {
		// An unprivileged agent (tests on a host) cannot setgroups; it can only run as itself.
		attr.Sys.Credential = &syscall.Credential{
			Uid: spec.user.uid, Gid: spec.user.gid, Groups: spec.user.groups,
		}
	}
	if a.cfg.Root != "/" {
		attr.Sys.Chroot = a.cfg.Root
	}
	return attr
}

// runDetached starts a background process whose output goes to the guest
// console, answers with its PID and returns; the reaper collects its exit.
func (a *Agent) runDetached(spec *execSpec, out *execSender) error {
	null, err := os.Open(os.DevNull)
	if err != nil {
		return status.Errorf(codes.Internal, "exec: %v", err)
	}
	defer null.Close()
	console, err := os.OpenFile(a.cfg.Console, os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		console, err = os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return status.Errorf(codes.Internal, "exec: %v", err)
		}
	}
	defer console.Close()
	attr := a.procAttr(spec)
	attr.Files = []uintptr{null.Fd(), console.Fd(), console.Fd()}
	pid, waitCh, err := a.reaper.Start(spec.path, spec.argv, attr)
	if err != nil {
		code := exitNotExecutable
		if errors.Is(err, unix.ENOENT) {
			code = exitNotFound
		}
		return out.fail(code, fmt.Sprintf("%s: %v", spec.argv[0], err))
	}
	a.log.Info("detached process started", "pid", pid, "argv", spec.argv)
	go func() {
		ws := <-waitCh
		a.log.Info("detached process exited", "pid", pid, "status", ws.ExitStatus(), "signal", ws.Signal())
	}()
	return out.send(&agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Started{Started: &agentv1.ExecStarted{Pid: int32(pid)}}})
}

// execInput applies the client's later messages until the client stops sending or the
// process exits.
func (a *Agent) execInput(stream agentv1.Agent_ExecServer, spec *execSpec, std *stdio, pid int, exited <-chan struct{}) {
	stdinClosed := false
	closeStdin := func() {
		if stdinClosed || std.stdin == nil {
			return
		}
		stdinClosed = true
		if std.ptm != nil {
			// A tty has no EOF of its own: the line discipline turns ^D into one.
			_, _ = std.ptm.Write([]byte{4})
			return
		}
		std.stdin.Close()
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			// Half-close (EOF) means no more input; cancellation is handled by the caller.
			closeStdin()
			return
		}
		select {
		case <-exited:
			return
		default:
		}
		switch m := msg.GetMsg().(type) {
		case *agentv1.ExecRequest_Stdin:
			if std.stdin != nil && !stdinClosed {
				if _, err := std.stdin.Write(m.Stdin); err != nil {
					// The process closed its stdin or exited: drop further input.
					closeStdin()
				}
			}
		case *agentv1.ExecRequest_StdinClose:
			closeStdin()
		case *agentv1.ExecRequest_Resize:
			if std.ptm != nil {
				_ = setWinsize(std.ptm, m.Resize)
			}
		case *agentv1.ExecRequest_Signal:
			if m.Signal > 0 && m.Signal < 65 {
				_ = unix.Kill(pid, unix.Signal(m.Signal))
			}
		}
	}
}

// openPTY allocates a pseudo-terminal pair. The master is non-blocking (so reads honour
// deadlines and Close); the slave is opened through TIOCGPTPEER, without a path lookup.
func openPTY() (ptm, pts *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	sfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("open pty peer: %w", errno)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), os.NewFile(sfd, "pts"), nil
}

func setWinsize(ptm *os.File, size *agentv1.TerminalSize) error {
	rc, err := ptm.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{
			Row: uint16(size.GetRows()), Col: uint16(size.GetCols()),
		})
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("set terminal size: %w", err)
	}
	return nil
}

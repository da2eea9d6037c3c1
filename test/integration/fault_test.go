package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/test/images/busybox"
	"github.com/boxctl/boxctl/test/testbin"
)

// Environment of the fault test.
const (
	// faultTrialsEnv sets the number of kills (default: a reduced run of
	// defaultFaultTrials, which CI runs; the full run is 30 or more).
	faultTrialsEnv = "BOXCTL_FAULT_TRIALS"
	// faultSeedEnv replays the kill points of an earlier run.
	faultSeedEnv = "BOXCTL_FAULT_SEED"
	// faultMarkEnv is set in the environment of every boxctl process the
	// test starts, to HOME#TRIAL#. Plugins and monitors inherit it, so the
	// test finds its own processes by their home and trial, never by name:
	// other boxctl installations run plugins on the same machine.
	faultMarkEnv = "BOXCTL_TEST_FAULT_MARK"
)

const defaultFaultTrials = 8

// faultVerbs are the commands the CLI is killed in.
var faultVerbs = []string{"run", "create", "start", "stop", "rm", "pull"}

// TestKillCLIMidCommandLeavesNoPluginsOrSockets kills boxctl with SIGKILL
// at random points of run, create, start, stop, rm and pull, and checks
// after each kill that no plugin process of that command outlives it, that
// it left no go-plugin socket behind, that the monitors of non-detached
// boxes still stop their boxes, and that the home is consistent.
func TestKillCLIMidCommandLeavesNoPluginsOrSockets(t *testing.T) {
	trials := defaultFaultTrials
	if s := os.Getenv(faultTrialsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number of trials", faultTrialsEnv, s)
		}
		trials = n
	}
	seed := time.Now().UnixNano()
	if s := os.Getenv(faultSeedEnv); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want an integer", faultSeedEnv, s)
		}
		seed = n
	}
	t.Logf("%d trials, %s=%d", trials, faultSeedEnv, seed)
	rng := rand.New(rand.NewSource(seed))

	f := newFaultEnv(t)
	est := f.calibrate()
	t.Logf("command durations without a kill: %v", est)

	var killed, leakyTrials, leakedProcs, staleSockets int
	for i := 0; i < trials; i++ {
		verb := faultVerbs[i%len(faultVerbs)]
		args := f.prepare(i, verb, rng)
		// A random point of the command: every other trial anywhere in its
		// usual duration (a little past it, so the end is covered too),
		// else a random point after its first plugin started.
		afterPlugin := i%2 == 1
		delay := time.Duration(rng.Int63n(int64(est[verb])*5/4 + 1))
		when := fmt.Sprintf("%s after its start", delay.Round(time.Millisecond))
		if afterPlugin {
			delay /= 2
			when = fmt.Sprintf("%s after its first plugin started", delay.Round(time.Millisecond))
		}
		res := f.killAt(i, args, delay, afterPlugin)
		if res.killed {
			killed++
		} else if !afterPlugin {
			// The machine is faster or slower than at calibration.
			est[verb] = max(res.took, 20*time.Millisecond)
		}
		procs, socks := f.checkTrial(i, verb)
		if len(procs) > 0 || len(socks) > 0 {
			leakyTrials++
			leakedProcs += len(procs)
			staleSockets += len(socks)
			t.Errorf("trial %d (boxctl %s, killed %s, mid-command: %v): %d plugin processes outlived it %v, %d go-plugin sockets left behind %v",
				i, strings.Join(args, " "), when, res.killed, len(procs), procs, len(socks), socks)
		}
	}
	t.Logf("%d trials, %d killed mid-command; %d trials orphaned plugins or sockets: %d plugin processes, %d stale sockets",
		trials, killed, leakyTrials, leakedProcs, staleSockets)
	f.checkFinal()
}

// faultEnv is an env with the real storage and image plugins next to the
// procvmm test double, a local image, and a private TMPDIR, where go-plugin
// makes its sockets unless told otherwise: sockets found there can only be
// this test's.
type faultEnv struct {
	*env
	image string
	tmp   string
}

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	e := newEnv(t, "")
	bins.Dir(t, "boxctl-plugin-qcow2", "boxctl-plugin-oci")
	dir := testbin.ShortTempDir(t)
	layout := filepath.Join(dir, "img")
	if _, err := busybox.BuildLayout(layout, busybox.Options{}); err != nil {
		t.Fatalf("build the busybox image: %v", err)
	}
	f := &faultEnv{env: e, image: "oci-layout:" + layout, tmp: filepath.Join(dir, "t")}
	if err := os.Mkdir(f.tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever a failed run left: monitors, VMs, orphaned plugins.
		for _, p := range markedProcs(f.home + "#") {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	})
	return f
}

func trialMark(home, trial string) string { return home + "#" + trial + "#" }

func (f *faultEnv) command(trial string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(f.bin, "boxctl"), append([]string{"--home", f.home, "--config", f.config}, args...)...)
	cmd.Env = append(os.Environ(), "BOXCTL_LOG=", "TMPDIR="+f.tmp, faultMarkEnv+"="+trialMark(f.home, trial))
	return cmd
}

// must runs a set-up command of the trial, which must succeed.
func (f *faultEnv) must(trial string, args ...string) {
	f.t.Helper()
	if out, err := f.command(trial, args...).CombinedOutput(); err != nil {
		f.t.Fatalf("boxctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// calibrate measures how long each command takes when nothing kills it.
func (f *faultEnv) calibrate() map[string]time.Duration {
	f.t.Helper()
	est := map[string]time.Duration{}
	for _, verb := range faultVerbs {
		// The second run counts: the first one pays for cold caches.
		for round := range 2 {
			args := f.prepare(-1-round, verb, rand.New(rand.NewSource(1)))
			start := time.Now()
			out, err := f.command("cal", args...).CombinedOutput()
			d := time.Since(start)
			var ee *exec.ExitError
			if err != nil && !(errors.As(err, &ee) && verb == "run") {
				// run exits 125 here: procvmm boxes have no guest agent to
				// run the command in. It has created and started the box.
				f.t.Fatalf("calibrate: boxctl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			est[verb] = max(d, 20*time.Millisecond)
		}
		f.must("cal", "rm", "-a", "-f")
	}
	return est
}

// prepare sets up what the trial's command needs and returns its arguments.
func (f *faultEnv) prepare(trial int, verb string, rng *rand.Rand) []string {
	f.t.Helper()
	tag := strconv.Itoa(trial)
	name := "t" + tag
	if trial < 0 {
		name, tag = fmt.Sprintf("cal%d-%s", -trial, verb), "cal"
	}
	switch verb {
	case "run":
		switch rng.Intn(3) {
		case 0:
			return []string{"run", "--name", name, f.image, "--", "true"}
		case 1:
			return []string{"run", "--rm", "--name", name, f.image, "--", "true"}
		default:
			return []string{"run", "-d", "--name", name, f.image}
		}
	case "create":
		return []string{"create", "--name", name, f.image}
	case "start":
		f.must(tag, "create", "--name", name, f.image)
		return []string{"start", name}
	case "stop":
		f.must(tag, "create", "--name", name, f.image)
		f.must(tag, "start", name)
		return []string{"stop", "-t", "2", name}
	case "rm":
		f.must(tag, "create", "--name", name, f.image)
		if rng.Intn(2) == 0 {
			f.must(tag, "start", name)
		}
		return []string{"rm", "-f", name}
	case "pull":
		// Drop the cached image so the pull does the work again. It may
		// not be cached (a killed pull); that is fine.
		_ = f.command(tag, "rmi", "-f", f.image).Run()
		return []string{"pull", f.image}
	}
	f.t.Fatalf("unknown verb %q", verb)
	return nil
}

type killResult struct {
	killed bool          // false: the command ended before the kill point
	took   time.Duration // how long it ran
}

// killAt runs boxctl and kills it with SIGKILL after delay, counted from
// the start or, with afterPlugin, from when its first plugin process
// appeared.
func (f *faultEnv) killAt(trial int, args []string, delay time.Duration, afterPlugin bool) killResult {
	f.t.Helper()
	cmd := f.command(strconv.Itoa(trial), args...)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var res killResult
	finish := func() killResult {
		res.took = time.Since(start)
		return res
	}
	if afterPlugin {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for !hasPluginChild(cmd.Process.Pid) {
			select {
			case <-done:
				return finish()
			case <-tick.C:
			}
		}
	}
	select {
	case <-done:
	case <-time.After(delay):
		_ = cmd.Process.Kill()
		err := <-done
		var ee *exec.ExitError
		res.killed = errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
	}
	return finish()
}

// hasPluginChild reports whether pid has a boxctl-plugin-* child.
func hasPluginChild(pid int) bool {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, file := range files {
		b, _ := os.ReadFile(file)
		for _, child := range strings.Fields(string(b)) {
			exe, _ := os.Readlink("/proc/" + child + "/exe")
			if strings.HasPrefix(filepath.Base(exe), "boxctl-plugin-") {
				return true
			}
		}
	}
	return false
}

// checkTrial waits a few seconds for the trial's plugins to go away and
// returns those still alive without their boxctl and the go-plugin sockets
// nobody listens on. It kills and removes what it returns, so the next
// trial starts clean. Then it checks the state.
func (f *faultEnv) checkTrial(trial int, verb string) (procs []string, socks []string) {
	f.t.Helper()
	mark := trialMark(f.home, strconv.Itoa(trial))
	deadline := time.Now().Add(5 * time.Second)
	var orphans []process
	for {
		orphans = orphanPlugins(mark)
		socks = f.staleSockets()
		if len(orphans)+len(socks) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(orphans) > 0 {
		// Kill them and count their sockets as this trial's too.
		for _, p := range orphans {
			procs = append(procs, fmt.Sprintf("%d:%s", p.pid, filepath.Base(p.exe)))
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
		for _, p := range orphans {
			waitDead(f.t, p.pid, 5*time.Second)
		}
		socks = f.staleSockets()
	}
	for _, s := range socks {
		_ = os.Remove(s)
	}

	// Monitors stop the boxes of a boxctl that died without detaching them.
	f.waitNonDetachedStopped(trial, 30*time.Second)
	// The home is consistent and the commands that read and clean it work.
	if out, err := f.command("check", "ls", "-a").CombinedOutput(); err != nil {
		f.t.Fatalf("trial %d (%s): ls -a after the kill: %v\n%s", trial, verb, err, out)
	}
	rt := f.runtime()
	f.assertConsistent(rt)
	_ = rt.Close()
	return procs, socks
}

// waitNonDetachedStopped waits until no box of a non-detached run is
// active. The boxctl that owned each of them is dead by now.
func (f *faultEnv) waitNonDetachedStopped(trial int, within time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(within)
	for {
		var active, unstarted []string
		st, err := state.Open(context.Background(), f.home)
		if err != nil {
			f.t.Fatal(err)
		}
		err = st.View(context.Background(), func(tx *state.Tx) error {
			boxes, err := tx.Boxes()
			for _, b := range boxes {
				switch {
				case b.Run == nil || b.Run.Detached || !b.Status.Active():
				case b.Status == model.StatusStarting && b.Run.Monitor.IsZero() && b.Run.VM.IsZero() && !pidAlive(b.Run.Owner.PID) && !monitorAlive(b.ID):
					// Killed before it spawned the monitor: nothing runs,
					// and the next command's recovery says so.
					unstarted = append(unstarted, b.Name)
				default:
					active = append(active, b.Name+" "+string(b.Status))
				}
			}
			return err
		})
		if err != nil {
			f.t.Fatal(err)
		}
		if len(active) == 0 {
			if len(unstarted) > 0 {
				listed := f.ok("ls", "-a", "--format", "{{.Name}} {{.Status}}")
				for _, n := range unstarted {
					// Stopped, or gone if it was a run --rm.
					if strings.Contains(listed, n+" starting") {
						f.t.Fatalf("trial %d: box %s, whose start was killed before its monitor existed, is still starting after the next command:\n%s", trial, n, listed)
					}
				}
			}
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("trial %d: boxes of a dead boxctl still active after %s: %v", trial, within, active)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkFinal removes every box and checks that nothing of the test's is
// left: no box, no process, no socket, no socket directory.
func (f *faultEnv) checkFinal() {
	f.t.Helper()
	f.must("final", "rm", "-a", "-f")
	if out, err := f.command("final", "ls", "-a", "-q").CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		f.t.Fatalf("ls -a -q after rm -a -f: %v: %s", err, out)
	}
	rt := f.runtime()
	f.assertConsistent(rt)
	_ = rt.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := markedProcs(f.home + "#")
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("processes of the test still alive after rm -a -f: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// No boxctl of the test runs now: a command sweeps the socket
	// directories of dead ones and removes its own when it ends.
	f.must("final", "ls", "-a")
	if socks := f.staleSockets(); len(socks) > 0 {
		f.t.Errorf("stale go-plugin sockets at the end: %v", socks)
	}
	run := filepath.Join(f.home, "run", "plugins")
	if entries, err := os.ReadDir(run); err == nil && len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		f.t.Errorf("socket directories of dead boxctl processes left in %s: %v", run, names)
	}
}

// staleSockets returns the unix sockets in the test's TMPDIR and in the
// home's run directory that no process listens on.
func (f *faultEnv) staleSockets() []string {
	bound := boundUnixSockets()
	var stale []string
	for _, root := range []string{f.tmp, filepath.Join(f.home, "run")} {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.Type()&fs.ModeSocket != 0 && !bound[path] {
				stale = append(stale, path)
			}
			return nil
		})
	}
	return stale
}

// boundUnixSockets returns the paths of the unix sockets that exist in
// this network namespace: a socket file not among them is stale.
func boundUnixSockets() map[string]bool {
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	lines := strings.Split(string(b), "\n")
	for _, line := range lines[1:] {
		fields := strings.Fields(line)
		if len(fields) >= 8 {
			out[fields[7]] = true
		}
	}
	return out
}

type process struct {
	pid, ppid int
	exe       string
	args      []string
}

func (p process) String() string { return fmt.Sprintf("%d:%s", p.pid, strings.Join(p.args, " ")) }

// markedProcs returns the live processes whose faultMarkEnv starts with
// prefix.
func markedProcs(prefix string) []process {
	entries, _ := os.ReadDir("/proc")
	var out []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !bytes.Contains(env, []byte(faultMarkEnv+"="+prefix)) {
			continue
		}
		marked := false
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte(faultMarkEnv+"=")); ok && bytes.HasPrefix(v, []byte(prefix)) {
				marked = true
			}
		}
		if !marked || !pidAlive(pid) {
			continue
		}
		p := process{pid: pid, ppid: ppidOf(pid)}
		p.exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		p.args = strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		out = append(out, p)
	}
	return out
}

// monitorAlive reports whether a box monitor process for box id runs: a
// monitor records itself in the box's run only once the VM is ready, so a
// start killed after it spawned the monitor leaves a box that looks
// unstarted in the store while its monitor boots it (and then stops it,
// its owner being gone).
func monitorAlive(id string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if slices.Contains(args, "monitor") && slices.Contains(args, id) {
			return true
		}
	}
	return false
}

// orphanPlugins returns the plugin servers of the trial whose boxctl is
// gone. A plugin whose parent is a live boxctl (a box monitor stopping its
// box) is not an orphan; VMs (procvmm's "vm" mode, qemu's "launch") are
// not plugin servers.
func orphanPlugins(mark string) []process {
	var out []process
	for _, p := range markedProcs(mark) {
		if !strings.HasPrefix(filepath.Base(p.exe), "boxctl-plugin-") {
			continue
		}
		if len(p.args) > 1 && (p.args[1] == "vm" || p.args[1] == "launch") {
			continue
		}
		if parent, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.ppid)); err == nil && filepath.Base(parent) == "boxctl" && pidAlive(p.ppid) {
			continue
		}
		out = append(out, p)
	}
	return out
}

func ppidOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(fields[1])
	return n
}

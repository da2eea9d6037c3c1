// Command diskswitch measures the disk half of an O(1) snapshot and clone
// of a running box, at the plugin level, with the real plugins over
// go-plugin and a real guest: the quiesce bracket as the core runs it
// (agent Quiesce, VMM Pause, storage CreateSnapshot or Clone, GetDisk, VMM
// SwitchDisk, VMM Resume, agent Thaw), step by step, on two boxes whose
// guests wrote a little (64 MiB) and a lot (2 GiB) to their writable disks
// first: n snapshots, then n clones, each after 4 MiB more. It prints the
// time of each step, the time the vCPUs stand still (Pause to Resume) and
// the time the guest's filesystem is frozen (Quiesce to Thaw). The core's
// own bracket adds its state transactions and locks.
//
// Run it with `make bench`, or after `make build guest`:
//
//	go run ./bench/diskswitch -bin bin -guest build/guest
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/guest/vmtest"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

func main() {
	bin := flag.String("bin", "bin", "directory with the plugins (boxctl-plugin-qemu, boxctl-plugin-qcow2)")
	guest := flag.String("guest", "build/guest", "directory with vmlinuz and initramfs")
	dir := flag.String("dir", "/var/tmp", "directory for the disks")
	small := flag.Int("small", 64, "MiB the guest writes before the first round of the small case")
	big := flag.Int("big", 2048, "MiB the guest writes before the first round of the large case")
	rounds := flag.Int("n", 11, "rounds per case (median reported; each writes 4 MiB first)")
	flag.Parse()
	if err := run(*bin, *guest, *dir, []int{*small, *big}, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// plugins are the two plugin processes.
type plugins struct {
	clients []*plugin.Client
	vmm     sdk.VMMClient
	disks   sdk.DiskBackendClient
	snaps   sdk.SnapshotBackendClient
}

func (p *plugins) start(path string, roles ...string) ([]any, error) {
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake(),
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: sdk.ClientPluginSet()},
		Cmd:              exec.Command(path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn}),
	})
	p.clients = append(p.clients, c)
	rpc, err := c.Client()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	var out []any
	for _, r := range roles {
		raw, err := rpc.Dispense(r)
		if err != nil {
			return nil, fmt.Errorf("%s: dispense %s: %w", path, r, err)
		}
		out = append(out, raw)
	}
	return out, nil
}

func (p *plugins) close() {
	for _, c := range p.clients {
		c.Kill()
	}
}

// steps are the bracket's steps, in order.
var steps = []string{"Quiesce", "Pause", "storage", "GetDisk", "SwitchDisk", "Resume", "Thaw"}

// round is one bracket's timings.
type round struct {
	step           map[string]time.Duration
	paused, frozen time.Duration
}

func run(binDir, guestDir, tmpDir string, sizes []int, rounds int) error {
	ctx := context.Background()
	binDir, _ = filepath.Abs(binDir)
	guestDir, _ = filepath.Abs(guestDir)
	tmp, err := os.MkdirTemp(tmpDir, "bxsw")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var p plugins
	defer p.close()
	r, err := p.start(filepath.Join(binDir, "boxctl-plugin-qemu"), sdk.RoleVMM)
	if err != nil {
		return err
	}
	p.vmm = r[0].(sdk.VMMClient)
	cfg := fmt.Sprintf("kernel = %q\ninitrd = %q\n", filepath.Join(guestDir, "vmlinuz"), filepath.Join(guestDir, "initramfs"))
	if err := p.vmm.Configure(ctx, &sdk.Config{Filename: "bench.hcl", Body: []byte(cfg)}); err != nil {
		return err
	}
	r, err = p.start(filepath.Join(binDir, "boxctl-plugin-qcow2"), sdk.RoleDisks, sdk.RoleSnapshots)
	if err != nil {
		return err
	}
	p.disks, p.snaps = r[0].(sdk.DiskBackendClient), r[1].(sdk.SnapshotBackendClient)
	if err := p.disks.Configure(ctx, &sdk.Config{StateDir: filepath.Join(tmp, "state")}); err != nil {
		return err
	}

	root := filepath.Join(tmp, "root.ext4")
	if err := vmtest.MakeRootDisk(ctx, root); err != nil {
		return err
	}
	// A box of its own for each case, so that both start from a disk with
	// one base and a VM that just booted.
	for _, mib := range sizes {
		b, err := startBox(ctx, p, tmp, root, fmt.Sprintf("box-%d", mib))
		if err != nil {
			return err
		}
		err = b.run(ctx, mib, rounds)
		b.stop()
		if err != nil {
			return err
		}
	}
	return nil
}

// box is a running box: its disk and VM.
type box struct {
	p      plugins
	id     string
	vm     sdk.VM
	agent  *agentclient.Client
	cmd    *exec.Cmd
	notice string
	log    *os.File
}

func startBox(ctx context.Context, p plugins, tmp, root, id string) (*box, error) {
	disk, err := p.disks.CreateDisk(ctx, sdk.CreateDiskRequest{ID: id, Size: 4 << 30})
	if err != nil {
		return nil, err
	}
	run := filepath.Join(tmp, "run-"+id)
	if err := os.Mkdir(run, 0o700); err != nil {
		return nil, err
	}
	spec := sdk.VMSpec{
		BoxID: id, VCPUs: 1, MemoryMiB: 512, RunDir: run,
		Network:    sdk.NetworkSpec{Mode: sdk.NetworkNone},
		KernelArgs: guestboot.Default().Args(),
		Disks: []sdk.DiskSpec{
			{Path: root, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
			diskSpec(disk),
		},
	}
	confined := "unconfined (not root)"
	if os.Geteuid() == 0 {
		// As a root boxctl runs it: QEMU as a user of its own.
		uid := uint32(0x7ffa0000 + os.Getpid()%0x10000)
		spec.Sandbox = sdk.Sandbox{UID: uid, GID: uid}
		confined = "QEMU confined as uid " + fmt.Sprint(uid)
	}
	plan, err := p.vmm.Plan(ctx, spec)
	if err != nil {
		return nil, err
	}
	b := &box{p: p, id: id, notice: strings.TrimSuffix(plan.Notice, ".") + "; " + confined}
	if b.log, err = os.Create(filepath.Join(run, "vm.log")); err != nil {
		return nil, err
	}
	b.cmd = exec.Command(plan.Argv[0], plan.Argv[1:]...)
	b.cmd.Env, b.cmd.Dir, b.cmd.Stdout, b.cmd.Stderr = plan.Env, plan.Dir, b.log, b.log
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		b.log.Close()
		return nil, err
	}
	b.vm = sdk.VM{Handle: plan.Handle, PID: b.cmd.Process.Pid}
	if b.agent, err = agentclient.Dial(ctx, plan.AgentSocket); err != nil {
		b.stop()
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	if _, err := b.agent.WaitReady(wctx); err != nil {
		b.stop()
		console, _ := os.ReadFile(plan.ConsoleLog)
		return nil, fmt.Errorf("guest agent: %w\n%s", err, console)
	}
	return b, nil
}

func (b *box) stop() {
	if b.agent != nil {
		b.agent.Close()
	}
	_ = b.cmd.Process.Kill()
	_ = b.cmd.Wait()
	b.log.Close()
}

// guest runs a shell script in the box.
func (b *box) guest(ctx context.Context, script string) (time.Duration, error) {
	var out bytes.Buffer
	start := time.Now()
	res, err := b.agent.Exec(ctx, agentclient.ExecRequest{Argv: []string{"sh", "-c", script}}, nil, &out, &out, nil, nil)
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("exit %d: %s", res.ExitCode, out.String())
	}
	return time.Since(start), err
}

// run writes mib MiB in the guest, then measures rounds snapshots and
// rounds clones of the running box, each after 4 MiB more.
func (b *box) run(ctx context.Context, mib, rounds int) error {
	took, err := b.guest(ctx, fmt.Sprintf("dd if=/dev/zero of=/fill bs=1M count=%d conv=fsync 2>/dev/null", mib))
	if err != nil {
		return fmt.Errorf("the guest's write of %d MiB: %w", mib, err)
	}
	fmt.Printf("\n== a running box whose guest wrote %d MiB to its writable disk (%.0f MiB/s; %s) ==\n", mib, float64(mib)/took.Seconds(), b.notice)
	clones := 0
	for _, op := range []string{"snapshot", "clone"} {
		var all []round
		for i := range rounds {
			if i > 0 || op == "clone" {
				if _, err := b.guest(ctx, "dd if=/dev/zero of=/round bs=1M count=4 conv=fsync 2>/dev/null"); err != nil {
					return err
				}
			}
			storage := func() error {
				if op == "snapshot" {
					_, err := b.p.snaps.CreateSnapshot(ctx, b.id, fmt.Sprintf("s%d", i))
					return err
				}
				clones++
				_, err := b.p.snaps.Clone(ctx, sdk.CloneRequest{ID: b.id, NewID: fmt.Sprintf("%s-clone-%d", b.id, clones)})
				return err
			}
			rd, err := b.bracket(ctx, storage)
			if err != nil {
				return fmt.Errorf("%s round %d: %w", op, i, err)
			}
			all = append(all, rd)
		}
		first := "first round: the overlay holds all of it"
		if op == "clone" {
			first = "first round: after the snapshots, the overlay holds 4 MiB"
		}
		title := "snapshot (storage: CreateSnapshot)"
		if op == "clone" {
			title = "clone (storage: Clone)"
		}
		report(title, first, all)
	}
	d, err := b.p.disks.GetDisk(ctx, b.id)
	if err != nil {
		return err
	}
	fmt.Printf("  the box's disk ended with %d files below its overlay; the guest ran on throughout\n", len(d.BackingChain))
	return nil
}

func diskSpec(d sdk.Disk) sdk.DiskSpec {
	out := sdk.DiskSpec{Path: d.Path, Format: d.Format, Role: sdk.DiskRoleWritable}
	for _, b := range d.BackingChain {
		out.BackingChain = append(out.BackingChain, sdk.ChainFile{Path: b.Path, Format: b.Format})
	}
	return out
}

// bracket runs the quiesce bracket around storage as the core does:
// Resume and Thaw run whatever fails.
func (b *box) bracket(ctx context.Context, storage func() error) (rd round, err error) {
	c, p, vm := b.agent, b.p, b.vm
	rd.step = map[string]time.Duration{}
	timed := func(name string, f func() error) error {
		start := time.Now()
		err := f()
		rd.step[name] = time.Since(start)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	frozen := time.Now()
	if err := timed("Quiesce", func() error { _, err := c.Quiesce(ctx, 0); return err }); err != nil {
		return rd, err
	}
	defer func() {
		if terr := timed("Thaw", func() error { _, err := c.Thaw(ctx); return err }); terr != nil && err == nil {
			err = terr
		}
		rd.frozen = time.Since(frozen)
	}()
	paused := time.Now()
	if err := timed("Pause", func() error { return p.vmm.Pause(ctx, vm) }); err != nil {
		return rd, err
	}
	defer func() {
		if rerr := timed("Resume", func() error { return p.vmm.Resume(ctx, vm) }); rerr != nil && err == nil {
			err = rerr
		}
		rd.paused = time.Since(paused)
	}()
	if err := timed("storage", storage); err != nil {
		return rd, err
	}
	var d sdk.Disk
	if err := timed("GetDisk", func() (err error) { d, err = p.disks.GetDisk(ctx, b.id); return err }); err != nil {
		return rd, err
	}
	err = timed("SwitchDisk", func() error { return p.vmm.SwitchDisk(ctx, vm, 1, diskSpec(d)) })
	return rd, err
}

func report(title, first string, all []round) {
	fmt.Printf("  %s\n", title)
	line := func(label string, pick func(round) time.Duration) {
		var later []time.Duration
		for _, r := range all[1:] {
			later = append(later, pick(r))
		}
		fmt.Printf("    %-22s first %8s   median %8s   max %8s\n", label, ms(pick(all[0])), ms(stat.Median(later)), ms(slicesMax(later)))
	}
	for _, s := range steps {
		line(s, func(r round) time.Duration { return r.step[s] })
	}
	line("paused (Pause→Resume)", func(r round) time.Duration { return r.paused })
	line("frozen (Quiesce→Thaw)", func(r round) time.Duration { return r.frozen })
	fmt.Printf("    (%s; then %d rounds after 4 MiB more each)\n", first, len(all)-1)
}

func slicesMax(d []time.Duration) time.Duration {
	m := d[0]
	for _, x := range d {
		m = max(m, x)
	}
	return m
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// Command rpc measures one plugin RPC round trip (Info on the procvmm test
// plugin) and takes it apart: boxctl's plugin host as shipped, go-plugin
// alone with and without AutoMTLS, and with gRPC's default transport
// settings against sdk.GRPCDialOptions. Variants run interleaved in rounds,
// so a busy machine slows them alike. Besides p50/p99 it prints the CPU
// time both processes spend per call, which a busy machine disturbs less
// than wall time.
//
//	go run ./bench/rpc -test-plugins build/test-plugins [-baseline-plugin OLD]
//
// -baseline-plugin names a procvmm binary built before a change to the
// sdk's server side, to compare against it in the same run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/pluginhost"
	"github.com/boxctl/boxctl/sdk"
)

type variant struct {
	name string
	call func() error
	pid  int
	// measured
	rtts []time.Duration
	cpu  time.Duration
}

func main() {
	testPlugins := flag.String("test-plugins", "build/test-plugins", "directory of the built test plugins")
	baseline := flag.String("baseline-plugin", "", "a procvmm binary built before the change, to compare against")
	n := flag.Int("n", 20000, "round trips measured per variant")
	rounds := flag.Int("rounds", 10, "interleaved rounds the round trips are split into")
	flag.Parse()
	if err := run(*testPlugins, *baseline, *n, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "rpc:", err)
		os.Exit(1)
	}
}

func run(testPlugins, baseline string, n, rounds int) error {
	ctx := context.Background()
	home, err := os.MkdirTemp("", "boxctl-rpc")
	if err != nil {
		return err
	}
	defer os.RemoveAll(home)
	defer plugin.CleanupClients()
	procvmm := filepath.Join(testPlugins, "boxctl-plugin-procvmm")

	var vs []*variant
	// starts are the times go-plugin took to start procvmm and connect,
	// by whether it used AutoMTLS (which makes a key and certificate at
	// each end).
	starts := map[bool][]time.Duration{}
	// boxctl's host, as shipped.
	cfg := config.Default()
	cfg.Home = home
	cfg.VMM = "procvmm"
	before := children()
	host := pluginhost.New(cfg, pluginhost.WithSearchDirs(testPlugins))
	defer host.Close()
	vmm, err := host.VMM(ctx)
	if err != nil {
		return err
	}
	vs = append(vs, &variant{name: "pluginhost (as shipped)", pid: newChild(before), call: func() error { _, err := vmm.Info(ctx); return err }})

	// windows are the flow-control settings of sdk.GRPCDialOptions alone
	// (its peer check cannot stand in front of TLS).
	windows := []grpc.DialOption{grpc.WithInitialWindowSize(4 << 20), grpc.WithInitialConnWindowSize(4 << 20)}
	add := func(name, bin string, mtls bool, dial []grpc.DialOption) error {
		cmd := exec.Command(bin)
		if dial == nil && !mtls && bin == procvmm {
			dial = sdk.GRPCDialOptions(cmd)
		}
		c := plugin.NewClient(&plugin.ClientConfig{
			HandshakeConfig:  sdk.Handshake(),
			VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: sdk.ClientPluginSet()},
			Cmd:              cmd,
			AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
			AutoMTLS:         mtls,
			GRPCDialOptions:  dial,
			Logger:           hclog.NewNullLogger(),
		})
		t := time.Now()
		rpc, err := c.Client()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if bin == procvmm {
			starts[mtls] = append(starts[mtls], time.Since(t))
		}
		raw, err := rpc.Dispense(sdk.RoleVMM)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		p := raw.(sdk.Plugin)
		vs = append(vs, &variant{name: name, pid: c.ReattachConfig().Pid, call: func() error { _, err := p.Info(ctx); return err }})
		return nil
	}
	type spec struct {
		name string
		bin  string
		mtls bool
		dial []grpc.DialOption
	}
	specs := []spec{
		{"go-plugin, peer creds, sdk transport", procvmm, false, nil},
		{"go-plugin, AutoMTLS, sdk windows", procvmm, true, windows},
		{"go-plugin, AutoMTLS, gRPC default dial", procvmm, true, nil},
	}
	if baseline != "" {
		specs = append(specs,
			spec{"baseline plugin, AutoMTLS, defaults", baseline, true, nil},
			spec{"baseline plugin, plaintext, defaults", baseline, false, nil})
	}
	for _, s := range specs {
		if err := add(s.name, s.bin, s.mtls, s.dial); err != nil {
			return err
		}
	}
	for _, v := range vs {
		for range 300 { // warm up
			if err := v.call(); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
		}
	}
	per := n / rounds
	for range rounds {
		for _, v := range vs {
			c0, p0 := selfCPU(), procCPU(v.pid)
			for range per {
				t := time.Now()
				if err := v.call(); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
				v.rtts = append(v.rtts, time.Since(t))
			}
			v.cpu += selfCPU() - c0 + procCPU(v.pid) - p0
		}
	}
	fmt.Printf("plugin start + connect (go-plugin): AutoMTLS %v, peer creds %v\n", starts[true], starts[false])
	fmt.Printf("plugin RPC round trip (Info), %d per variant, %d interleaved rounds:\n", per*rounds, rounds)
	for _, v := range vs {
		d := v.rtts
		sort.Slice(d, func(a, b int) bool { return d[a] < d[b] })
		cpu := "?"
		if v.pid > 0 {
			cpu = (v.cpu / time.Duration(len(d))).Round(time.Microsecond / 10).String()
		}
		fmt.Printf("  %-40s p50 %9s  p99 %9s  CPU/call (both processes) %s\n", v.name,
			d[len(d)/2].Round(time.Microsecond/10), d[len(d)*99/100].Round(time.Microsecond/10), cpu)
	}
	return nil
}

// selfCPU is the CPU time of this process, all threads.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the CPU time of process pid from /proc (clock ticks of 10 ms
// on this kernel's USER_HZ=100, so only long blocks are meaningful).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// children lists this process's child PIDs.
func children() map[int]bool {
	out := map[int]bool{}
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		b, _ := os.ReadFile(filepath.Join("/proc/self/task", t.Name(), "children"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out[pid] = true
			}
		}
	}
	return out
}

// newChild returns a child PID not in before, or 0.
func newChild(before map[int]bool) int {
	for pid := range children() {
		if !before[pid] {
			return pid
		}
	}
	return 0
}

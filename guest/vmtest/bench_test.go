package vmtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/guest/internal/initramfs"
)

// BenchmarkBoot measures QEMU start to agent ready (WaitReady: root mounted) for machine
// types, initramfs compressions and kernel command lines under TCG:
//
//	go test -run '^$' -bench BenchmarkBoot -benchtime 3x ./guest/vmtest/
//
// ns/op is the host-side time; guest-ms/op the guest's uptime when it answered.
func BenchmarkBoot(b *testing.B) {
	ctx := context.Background()
	g, err := BuildGuest(ctx)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	rootDisk, dataDisk := filepath.Join(dir, "root.ext4"), filepath.Join(dir, "data.qcow2")
	if err := MakeRootDisk(ctx, rootDisk); err != nil {
		b.Fatal(err)
	}
	if err := MakeDataDisk(ctx, dataDisk, 256); err != nil {
		b.Fatal(err)
	}
	initrds := map[string]string{"none": g.Initramfs}
	for _, comp := range []string{"gzip", "zstd", "unsigned"} {
		p := filepath.Join(dir, "initramfs."+comp)
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		opts := initramfs.Options{Agent: g.Agent, ModulesDir: g.ModulesDir, Compression: comp}
		if comp == "unsigned" {
			opts.Compression, opts.StripSignatures = "none", true
		}
		_, err = initramfs.Build(f, opts)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		initrds[comp] = p
	}
	const minimal = "console=ttyS0 quiet panic=-1"
	cases := []struct {
		machine, initrd, cpu, cmdline string
	}{
		{"q35", "none", "max", g.Cmdline},
		{"q35", "none", "qemu64", g.Cmdline},
		{"pc", "none", "qemu64", g.Cmdline},
		{"microvm", "none", "qemu64", g.Cmdline},
		{"microvm", "none", "max", g.Cmdline},
		{"q35", "gzip", "qemu64", g.Cmdline},
		{"q35", "zstd", "qemu64", g.Cmdline},
		{"q35", "none", "qemu64", minimal},
		{"q35", "unsigned", "max", g.Cmdline},
	}
	// BOXCTL_BENCH_CMDLINE adds a q35 case with extra kernel parameters, for experiments.
	if extra := os.Getenv("BOXCTL_BENCH_CMDLINE"); extra != "" {
		cases = append(cases, struct{ machine, initrd, cpu, cmdline string }{"q35", "none", "max", g.Cmdline + " " + extra})
	}
	for _, tc := range cases {
		cmdName := "recommended"
		switch {
		case tc.cmdline == minimal:
			cmdName = "minimal"
		case tc.cmdline != g.Cmdline:
			cmdName = "custom"
		}
		name := fmt.Sprintf("machine=%s/initrd=%s/cpu=%s/cmdline=%s", tc.machine, tc.initrd, tc.cpu, cmdName)
		b.Run(name, func(b *testing.B) {
			guest := *g
			guest.Initramfs = initrds[tc.initrd]
			cfg := Config{Guest: &guest, RootDisk: rootDisk, DataDisk: dataDisk, Dir: dir, Machine: tc.machine, CPU: tc.cpu, Cmdline: tc.cmdline}
			var guestTime time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StartTimer()
				vm, err := Boot(cfg)
				if err != nil {
					b.Fatal(err)
				}
				rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
				info, err := vm.Client.WaitReady(rctx)
				cancel()
				b.StopTimer()
				if err != nil {
					vm.Kill()
					b.Fatalf("%v\nqemu: %s\nconsole:\n%s", err, vm.QEMUStderr(), lastLines(vm.Console(), 30))
				}
				guestTime += info.Uptime
				// A clean power-off keeps the data disk's journal clean for the next boot.
				_ = vm.Client.Shutdown(ctx, 0)
				wctx, cancel := context.WithTimeout(ctx, time.Minute)
				_ = vm.Wait(wctx)
				cancel()
				vm.Kill()
			}
			b.ReportMetric(float64(guestTime.Milliseconds())/float64(b.N), "guest-ms/op")
		})
	}
}

// BenchmarkExecRoundTrip measures one Exec of `true` (start to exit status) through agentmux
// and virtio-serial on a running VM.
func BenchmarkExecRoundTrip(b *testing.B) {
	ctx := context.Background()
	g, err := BuildGuest(ctx)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	rootDisk, dataDisk := filepath.Join(dir, "root.ext4"), filepath.Join(dir, "data.qcow2")
	if err := MakeRootDisk(ctx, rootDisk); err != nil {
		b.Fatal(err)
	}
	if err := MakeDataDisk(ctx, dataDisk, 256); err != nil {
		b.Fatal(err)
	}
	vm, err := Boot(Config{Guest: g, RootDisk: rootDisk, DataDisk: dataDisk, Dir: dir, Cmdline: g.Cmdline})
	if err != nil {
		b.Fatal(err)
	}
	defer vm.Kill()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := vm.Client.WaitReady(rctx); err != nil {
		b.Fatal(err)
	}
	b.Run("exec-true", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			res, err := vm.Client.Exec(ctx, agentclient.ExecRequest{Argv: []string{"true"}}, nil, nil, nil, nil, nil)
			if err != nil || res.ExitCode != 0 {
				b.Fatalf("%+v, %v", res, err)
			}
		}
	})
	b.Run("ping", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := vm.Client.Ping(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

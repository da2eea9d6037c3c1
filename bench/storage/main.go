// Command storage benchmarks the qcow2 storage plugin through the real
// plugin binary over go-plugin, as boxctl uses it: CreateDisk (first, with
// mkfs of the blank base, and cached) vs qemu-img create; clone time for
// disks holding little and much data; snapshot time; and Export (flatten)
// throughput vs qemu-img convert of the same chain, at QEMU's default
// durability and at the same durability. (bench/qcow2 measures the qcow2
// library itself.)
//
//	go run ./bench/storage [-plugin PATH] [-dir /var/tmp] [-small 100] [-big 4096] [-export 1024] [-n 11]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/plugins/storage-qcow2/qcow2"
	"github.com/boxctl/boxctl/sdk"
)

const mib = 1 << 20

func main() {
	pluginPath := flag.String("plugin", "", "plugin binary (default: build ./plugins/storage-qcow2)")
	dir := flag.String("dir", "/var/tmp", "directory for the state dir and temporary images")
	smallMiB := flag.Int64("small", 100, "MiB of data in the small disk for the clone benchmark")
	bigMiB := flag.Int64("big", 4096, "MiB of data in the large disk for the clone benchmark")
	exportMiB := flag.Int64("export", 1024, "MiB of data in the chain flattened by the export benchmark")
	diskGiB := flag.Int64("size", 10, "virtual size in GiB of the disks created")
	n := flag.Int("n", 11, "repetitions (median reported)")
	flag.Parse()
	for _, tool := range []string{"qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			log.Fatalf("%s not found: install qemu-utils: %v", tool, err)
		}
	}
	tmp, err := os.MkdirTemp(*dir, "storage-bench-")
	if err != nil {
		log.Fatal(err)
	}
	b := &bench{tmp: tmp, size: uint64(*diskGiB) << 30, n: *n}
	defer func() {
		b.close()
		os.RemoveAll(tmp)
		if r := recover(); r != nil {
			log.Fatal(r)
		}
	}()
	if *pluginPath == "" {
		*pluginPath = filepath.Join(tmp, "boxctl-plugin-qcow2")
		fmt.Println("building the plugin ...")
		cmd := exec.Command("go", "build", "-o", *pluginPath, "github.com/boxctl/boxctl/plugins/storage-qcow2")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			panic(fmt.Sprintf("build the plugin: %v\n%s", err, out))
		}
	}
	b.start(*pluginPath)
	fmt.Printf("storage plugin benchmark in %s (through %s over go-plugin, %d GiB disks, median of %d)\n\n", tmp, *pluginPath, *diskGiB, *n)
	b.createDisks()
	b.clones([]int64{*smallMiB * mib, *bigMiB * mib})
	b.export(*exportMiB * mib)
}

type bench struct {
	tmp    string
	size   uint64
	n      int
	ctx    context.Context
	client *plugin.Client
	disks  sdk.DiskBackendClient
	snaps  sdk.SnapshotBackendClient
	seq    int
}

func (b *bench) start(path string) {
	b.ctx = context.Background()
	b.client = plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake(),
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: sdk.ClientPluginSet()},
		Cmd:              exec.Command(path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn}),
	})
	rpc, err := b.client.Client()
	must(err)
	raw, err := rpc.Dispense(sdk.RoleDisks)
	must(err)
	b.disks = raw.(sdk.DiskBackendClient)
	raw, err = rpc.Dispense(sdk.RoleSnapshots)
	must(err)
	b.snaps = raw.(sdk.SnapshotBackendClient)
	cfg := &sdk.Config{StateDir: filepath.Join(b.tmp, "state")}
	// One Configure configures both roles (one implementation serves
	// them).
	must(b.disks.Configure(b.ctx, cfg))
}

func (b *bench) close() {
	if b.client != nil {
		b.client.Kill()
	}
}

func (b *bench) id(prefix string) string {
	b.seq++
	return fmt.Sprintf("%s-%d", prefix, b.seq)
}

func (b *bench) create(id string) sdk.Disk {
	info, err := b.disks.CreateDisk(b.ctx, sdk.CreateDiskRequest{ID: id, Size: b.size})
	must(err)
	return info
}

func (b *bench) createDisks() {
	fmt.Println("CreateDisk")
	start := time.Now()
	first := b.create(b.id("create"))
	firstTook := time.Since(start)
	var cached, qemu []time.Duration
	for range b.n {
		start := time.Now()
		b.create(b.id("create"))
		cached = append(cached, time.Since(start))
	}
	blank := first.BackingChain[0].Path
	for i := range b.n {
		out := filepath.Join(b.tmp, fmt.Sprintf("qemu-overlay-%d.qcow2", i))
		start := time.Now()
		runQemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", blank, "-F", "raw", out, fmt.Sprint(b.size))
		qemu = append(qemu, time.Since(start))
		os.Remove(out)
	}
	fmt.Printf("  first (builds the blank ext4 base with mkfs.ext4) %8s\n", ms(firstTook))
	fmt.Printf("  cached blank base                                 %8s\n", ms(stat.Median(cached)))
	fmt.Printf("  qemu-img create -b blank (overlay only)           %8s\n\n", ms(stat.Median(qemu)))
}

// fill writes n bytes of incompressible data at off into the disk's
// overlay with the qcow2 package (faster than qemu-io for gigabytes).
func fill(path string, off, n int64, seed byte) {
	img, err := qcow2.Open(path, qcow2.OpenOptions{Writable: true})
	must(err)
	buf := make([]byte, 4*mib)
	x := uint64(seed)*0x9e3779b97f4a7c15 + 1
	for i := range buf {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		buf[i] = byte(x)
	}
	for pos := int64(0); pos < n; pos += int64(len(buf)) {
		buf[0], buf[1], buf[2] = byte(pos>>20), byte(pos>>28), seed
		l := min(int64(len(buf)), n-pos)
		_, err := img.WriteAt(buf[:l], off+pos)
		must(err)
	}
	must(img.Close())
}

func (b *bench) clones(sizes []int64) {
	fmt.Println("Clone and CreateSnapshot of a disk whose overlay holds N MiB of data")
	fmt.Println("  (first: the overlay holds all N MiB; later rounds: 4 MiB written over the frozen N MiB, median)")
	for _, size := range sizes {
		src := b.id("src")
		info := b.create(src)
		fill(info.Path, 0, size, 1)
		var freeze, shared, snap []time.Duration
		var firstFreeze, firstSnap time.Duration
		for i := range b.n + 1 {
			// A freeze clone: the overlay holds data.
			start := time.Now()
			_, err := b.snaps.Clone(b.ctx, sdk.CloneRequest{ID: src, NewID: b.id("clone")})
			took := time.Since(start)
			must(err)
			// The overlay is empty now: the next clone shares the base.
			start = time.Now()
			_, err = b.snaps.Clone(b.ctx, sdk.CloneRequest{ID: src, NewID: b.id("clone")})
			tookShared := time.Since(start)
			must(err)
			if i == 0 {
				firstFreeze = took
			} else {
				freeze, shared = append(freeze, took), append(shared, tookShared)
			}
			fill(info.Path, 0, min(size, 4*mib), byte(2+i))
		}
		snapSrc := b.id("snap")
		sinfo := b.create(snapSrc)
		fill(sinfo.Path, 0, size, 3)
		for i := range b.n + 1 {
			start := time.Now()
			_, err := b.snaps.CreateSnapshot(b.ctx, snapSrc, fmt.Sprintf("s%d", i))
			took := time.Since(start)
			must(err)
			if i == 0 {
				firstSnap = took
			} else {
				snap = append(snap, took)
			}
			fill(sinfo.Path, 0, min(size, 4*mib), byte(4+i))
		}
		fmt.Printf("  %5d MiB  clone (freeze): first %8s, then %8s   clone (empty overlay, shares the base) %8s\n",
			size/mib, ms(firstFreeze), ms(stat.Median(freeze)), ms(stat.Median(shared)))
		fmt.Printf("  %5d MiB  snapshot:       first %8s, then %8s\n", size/mib, ms(firstSnap), ms(stat.Median(snap)))
		// Free the space before the next size.
		list, err := b.disks.ListDisks(b.ctx)
		must(err)
		for _, d := range list {
			must(b.disks.RemoveDisk(b.ctx, d.ID))
		}
	}
	fmt.Println()
}

func (b *bench) export(data int64) {
	id := b.id("export")
	info := b.create(id)
	// Three layers of data over the blank base: each snapshot freezes one.
	third := data / 3 / mib * mib
	fill(info.Path, 0, third, 1)
	_, err := b.snaps.CreateSnapshot(b.ctx, id, "s1")
	must(err)
	fill(info.Path, third/2, third, 2)
	_, err = b.snaps.CreateSnapshot(b.ctx, id, "s2")
	must(err)
	fill(info.Path, 2*third, data-2*third, 3)
	path := b.get(id).Path
	rounds := max(3, b.n/3)
	fmt.Printf("Export (flatten a 4-layer chain, %d MiB of guest data; page cache warm; median of %d)\n", data/mib, rounds)

	type variant struct {
		name string
		run  func(out string)
	}
	variants := []variant{
		{"plugin Export -> qcow2 (fsync, the default)", func(out string) {
			_, err := b.disks.Export(b.ctx, sdk.ExportRequest{ID: id, Dest: out, Format: "qcow2"})
			must(err)
		}},
		{"qemu-img convert -O qcow2 (default: no flush)", func(out string) {
			runQemu("qemu-img", "convert", "-O", "qcow2", path, out)
		}},
		{"qemu-img convert -O qcow2 -t writeback (flush)", func(out string) {
			runQemu("qemu-img", "convert", "-t", "writeback", "-O", "qcow2", path, out)
		}},
		{"plugin Export -> raw (fsync, the default)", func(out string) {
			_, err := b.disks.Export(b.ctx, sdk.ExportRequest{ID: id, Dest: out, Format: "raw"})
			must(err)
		}},
		{"qemu-img convert -O raw (default: no flush)", func(out string) {
			runQemu("qemu-img", "convert", "-O", "raw", path, out)
		}},
		{"qemu-img convert -O raw -t writeback (flush)", func(out string) {
			runQemu("qemu-img", "convert", "-t", "writeback", "-O", "raw", path, out)
		}},
	}
	for _, v := range variants {
		var took []time.Duration
		for i := range rounds {
			out := filepath.Join(b.tmp, fmt.Sprintf("export-%d", i))
			start := time.Now()
			v.run(out)
			took = append(took, time.Since(start))
			os.Remove(out)
		}
		d := stat.Median(took)
		fmt.Printf("  %-48s %8s  %7.0f MiB/s\n", v.name, ms(d), float64(data)/mib/d.Seconds())
	}
	fmt.Println()
}

func (b *bench) get(id string) sdk.Disk {
	info, err := b.disks.GetDisk(b.ctx, id)
	must(err)
	return info
}

func runQemu(name string, args ...string) {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		panic(fmt.Sprintf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out))
	}
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d.Microseconds())/1000) }

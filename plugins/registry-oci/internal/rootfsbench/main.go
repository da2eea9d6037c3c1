// Command rootfsbench measures the registry-oci image source end to end on
// a synthetic image: pull throughput from a loopback registry, the time
// from a cached image (and from a reference) to a finished ext4 root disk,
// and the conventional pipeline on the same layers (extract with tar -x and
// apply whiteouts, then mkfs.ext4 -d), with the ratio between them.
//
// Run it through `go run ./bench/rootfs` from the module root.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

func main() {
	sizeMB := flag.Int("size", 200, "uncompressed image size in MB")
	files := flag.Int("files", 20000, "number of regular files")
	layers := flag.Int("layers", 4, "number of layers")
	comp := flag.String("compression", "gzip", "layer compression: gzip, zstd or none")
	dir := flag.String("dir", "", "work directory for caches and images (default: the system temp dir)")
	runs := flag.Int("runs", 3, "repetitions; medians are reported")
	keep := flag.Bool("keep", false, "keep the work directory")
	seed := flag.Int64("seed", 1, "random seed for the image content")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the measured runs to this file")
	skipConv := flag.Bool("skip-conventional", false, "measure only ours (for profiling; no ratios)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, config{
		size: int64(*sizeMB) << 20, files: *files, layers: *layers, comp: *comp,
		dir: *dir, runs: *runs, keep: *keep, seed: *seed, cpuprofile: *cpuprofile, skipConv: *skipConv,
	}); err != nil {
		fmt.Fprintln(os.Stderr, "rootfsbench:", err)
		os.Exit(1)
	}
}

type config struct {
	size          int64
	files, layers int
	comp, dir     string
	runs          int
	keep          bool
	seed          int64
	cpuprofile    string
	skipConv      bool
}

type timings struct {
	pull, build, rebuild, extract, mkfs, plan, stream []time.Duration
}

func run(ctx context.Context, c config) error {
	for _, tool := range []string{"tar", "mkfs.ext4", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: install tar and e2fsprogs", tool)
		}
	}
	if c.layers < 1 || c.files < 1 || c.runs < 1 {
		return fmt.Errorf("-layers, -files and -runs must be positive")
	}
	compression := map[string]ti.Compression{"gzip": ti.Gzip, "zstd": ti.Zstd, "none": ti.Uncompressed}
	tc, ok := compression[c.comp]
	if !ok {
		return fmt.Errorf("unknown -compression %q (want gzip, zstd or none)", c.comp)
	}
	work, err := os.MkdirTemp(c.dir, "boxctl-rootfs-bench-")
	if err != nil {
		return err
	}
	if c.keep {
		fmt.Println("work directory:", work)
	} else {
		defer os.RemoveAll(work)
	}

	fmt.Printf("generating %d MB in %d files over %d layers (%s)...\n", c.size>>20, c.files, c.layers, c.comp)
	entries, content, nfiles := genLayers(genSpec{totalBytes: c.size, files: c.files, layers: c.layers, seed: c.seed})
	ls := make([]*ti.Layer, len(entries))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.NumCPU())
	for i := range entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ls[i] = ti.FromTar(ti.Tar(entries[i]), tc)
		}()
	}
	wg.Wait()
	entries = nil
	var vls []v1.Layer
	var compressed, uncompressed int64
	for _, l := range ls {
		vls = append(vls, l)
		compressed += int64(len(l.Blob()))
		rc, _ := l.Uncompressed()
		n, _ := countBytes(rc)
		uncompressed += n
	}
	img, err := ti.Image(vls, v1.Config{Cmd: []string{"/bin/sh"}}, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		return err
	}
	reg := ti.NewRegistry()
	defer reg.Close()
	if err := reg.Push("bench/image:latest", img); err != nil {
		return fmt.Errorf("push to loopback registry: %w", err)
	}
	ref := reg.Ref("bench/image:latest")
	fmt.Printf("image: %d layers, %d files, %s of file data, %s of tar streams, %s as %s blobs; served at %s\n\n",
		len(ls), nfiles, mb(content), mb(uncompressed), mb(compressed), c.comp, ref)

	if c.cpuprofile != "" {
		f, err := os.Create(c.cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var t timings
	var ours, conv string
	for i := 0; i < c.runs; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		runDir := filepath.Join(work, fmt.Sprintf("run%d", i))
		o, cv, err := oneRun(ctx, ref, runDir, &t, i == c.runs-1, c.skipConv)
		if err != nil {
			return err
		}
		ours, conv = o, cv
		if c.skipConv {
			fmt.Printf("run %d: pull %v, build %v, build+index %v\n", i+1, last(t.pull), last(t.build), last(t.rebuild))
			continue
		}
		fmt.Printf("run %d: pull %v, build %v, build+index %v, extract %v, mkfs %v\n", i+1,
			last(t.pull), last(t.build), last(t.rebuild), last(t.extract), last(t.mkfs))
	}
	// Both images must be valid; ours must hold the same files.
	for _, p := range []string{ours, conv} {
		if p == "" {
			continue
		}
		if out, err := exec.Command("e2fsck", "-fn", p).CombinedOutput(); err != nil {
			return fmt.Errorf("e2fsck %s: %v\n%s", p, err, out)
		}
	}
	if c.skipConv {
		fmt.Printf("\nours, cached image -> ext4 root disk: min %s, median %s of %d runs; plan %s, flattened tar stream alone %s (medians)\n",
			secs(minimum(t.build)), secs(median(t.build)), c.runs, secs(median(t.plan)), secs(median(t.stream)))
		return nil
	}

	oursSize, convSize := fileSize(ours), fileSize(conv)

	pull, build, rebuild := median(t.pull), median(t.build), median(t.rebuild)
	extract, mkfs := median(t.extract), median(t.mkfs)
	// Each run's conventional total is its own extract plus its own mkfs,
	// so the minimum is a time the pipeline really achieved.
	var convRuns []time.Duration
	for i := range t.extract {
		convRuns = append(convRuns, t.extract[i]+t.mkfs[i])
	}
	conventional := median(convRuns)
	fmt.Printf("\nmedians of %d runs (host: %d CPUs, %s)\n", c.runs, runtime.NumCPU(), runtime.GOARCH)
	fmt.Printf("(1) pull, loopback registry -> empty cache:     %8s  %6.1f MB/s compressed, %6.1f MB/s uncompressed\n",
		secs(pull), rate(compressed, pull), rate(uncompressed, pull))
	fmt.Printf("(2) ours, cached image -> ext4 root disk:       %8s  (%s ext4)\n", secs(build), mb(oursSize))
	fmt.Printf("      of which: plan %s, flattened tar stream alone %s\n", secs(median(t.plan)), secs(median(t.stream)))
	fmt.Printf("    ours, same with layer indexes rebuilt:      %8s\n", secs(rebuild))
	fmt.Printf("    ours, reference -> ext4 (pull + build):     %8s\n", secs(pull+build))
	fmt.Printf("(3) conventional, tar -x + whiteouts:           %8s\n", secs(extract))
	fmt.Printf("    conventional, size + mkfs.ext4 -d:          %8s  (%s ext4)\n", secs(mkfs), mb(convSize))
	fmt.Printf("    conventional total:                         %8s\n", secs(conventional))
	fmt.Printf("\ncached image -> ext4 root disk, ours vs conventional (tar -x + whiteouts + mkfs.ext4 -d):\n")
	fmt.Printf("                 ours   conventional   ratio\n")
	fmt.Printf("    min      %8s   %12s   %5.1fx  (target >= 5x min-vs-min)\n", secs(minimum(t.build)), secs(minimum(convRuns)),
		minimum(convRuns).Seconds()/minimum(t.build).Seconds())
	fmt.Printf("    median   %8s   %12s   %5.1fx\n", secs(build), secs(conventional), conventional.Seconds()/build.Seconds())
	fmt.Printf("    max      %8s   %12s\n", secs(maximum(t.build)), secs(maximum(convRuns)))
	fmt.Printf("ratio conventional / ours with index rebuild (median): %.1fx, min-vs-min %.1fx\n",
		conventional.Seconds()/rebuild.Seconds(), minimum(convRuns).Seconds()/minimum(t.rebuild).Seconds())
	return nil
}

// oneRun pulls into a fresh cache, builds the root disk, rebuilds it with
// the layer indexes removed, and runs the conventional pipeline on the same
// cached blobs.
func oneRun(ctx context.Context, ref, dir string, t *timings, keepImages, skipConv bool) (string, string, error) {
	defer func() {
		if !keepImages {
			os.RemoveAll(dir)
		}
	}()
	cache := filepath.Join(dir, "cache")
	s, err := imagestore.Open(cache)
	if err != nil {
		return "", "", err
	}
	start := time.Now()
	img, err := s.Pull(ctx, ref, imagestore.PullOptions{})
	if err != nil {
		return "", "", fmt.Errorf("pull: %w", err)
	}
	t.pull = append(t.pull, time.Since(start))

	start = time.Now()
	rd, err := s.RootDisk(ctx, img.Digest)
	if err != nil {
		return "", "", fmt.Errorf("root disk: %w", err)
	}
	t.build = append(t.build, time.Since(start))

	// The same from a cache whose derived files are gone (as after an
	// upgrade of the index format): layer indexes are rebuilt from blobs.
	os.Remove(rd.Path)
	idx, _ := filepath.Glob(filepath.Join(cache, "index", "sha256", "*"))
	for _, p := range idx {
		os.Remove(p)
	}
	start = time.Now()
	if rd, err = s.RootDisk(ctx, img.Digest); err != nil {
		return "", "", fmt.Errorf("root disk with index rebuild: %w", err)
	}
	t.rebuild = append(t.rebuild, time.Since(start))

	// Where the build time goes: planning, and streaming the flattened tar
	// (decompression included) without writing ext4.
	start = time.Now()
	plan, err := s.LayerPlan(ctx, img)
	if err != nil {
		return "", "", err
	}
	t.plan = append(t.plan, time.Since(start))
	start = time.Now()
	if err := plan.WriteTar(ctx, io.Discard); err != nil {
		return "", "", err
	}
	t.stream = append(t.stream, time.Since(start))

	if skipConv {
		return rd.Path, "", nil
	}
	conv := filepath.Join(dir, "conventional.ext4")
	ex, mk, err := conventional(ctx, cache, img, filepath.Join(dir, "extracted"), conv)
	if err != nil {
		return "", "", err
	}
	t.extract = append(t.extract, ex)
	t.mkfs = append(t.mkfs, mk)
	return rd.Path, conv, nil
}

// conventional is the usual way to make a root disk: extract every layer
// into a directory with tar (applying whiteouts after each layer), measure
// the tree, and run mkfs.ext4 -d on an image sized to fit.
func conventional(ctx context.Context, cache string, img imagestore.Image, root, out string) (extract, mkfs time.Duration, err error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	for _, l := range img.Layers {
		blob := filepath.Join(cache, "blobs", "sha256", strings.TrimPrefix(l.Digest, "sha256:"))
		cmd := exec.CommandContext(ctx, "tar", "-x", "-f", blob, "-C", root,
			"--numeric-owner", "--same-owner", "--same-permissions", "--xattrs", "--xattrs-include=*")
		if o, err := cmd.CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("tar -x %s: %v: %s", l.Digest, err, o)
		}
		if err := applyWhiteouts(root); err != nil {
			return 0, 0, err
		}
	}
	extract = time.Since(start)

	start = time.Now()
	var bytes, inodes int64
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		inodes++
		if fi, err := d.Info(); err == nil {
			bytes += (fi.Size() + 4095) &^ 4095
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	size := (bytes + bytes/10 + inodes*256 + 64<<20 + 1<<20 - 1) &^ (1<<20 - 1)
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-N", fmt.Sprint(inodes+inodes/5+1024),
		"-d", root, out, fmt.Sprintf("%dk", size>>10))
	if o, err := cmd.CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("mkfs.ext4 -d: %v: %s", err, o)
	}
	if f, err := os.Open(out); err == nil {
		f.Sync() // as the image store does before committing a disk
		f.Close()
	}
	mkfs = time.Since(start)
	return extract, mkfs, nil
}

// applyWhiteouts removes each .wh.NAME marker and the NAME it hides. (The
// benchmark image has no opaque directories.)
func applyWhiteouts(root string) error {
	var marks []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".wh.") {
			marks = append(marks, p)
		}
		return err
	})
	if err != nil {
		return err
	}
	for _, m := range marks {
		os.RemoveAll(filepath.Join(filepath.Dir(m), strings.TrimPrefix(filepath.Base(m), ".wh.")))
		os.Remove(m)
	}
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func minimum(ds []time.Duration) time.Duration { return slices.Min(ds) }

func maximum(ds []time.Duration) time.Duration { return slices.Max(ds) }

func last(ds []time.Duration) string { return secs(ds[len(ds)-1]) }

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/(1<<20)) }

func rate(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

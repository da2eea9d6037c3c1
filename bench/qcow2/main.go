// Command qcow2 benchmarks the pure-Go qcow2 package against QEMU's tools:
// flatten throughput (vs qemu-img convert), overlay creation (vs qemu-img
// create) and the storage plugin's freeze-and-clone step.
//
//	go run ./bench/qcow2 [-dir /var/tmp] [-data 512] [-big 4096] [-n 21]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/plugins/storage-qcow2/qcow2"
)

func main() {
	dir := flag.String("dir", "/var/tmp", "directory for temporary images")
	dataMiB := flag.Int64("data", 512, "MiB of data written into the 2-layer chain for the flatten benchmark")
	bigMiB := flag.Int64("big", 4096, "MiB of data in the large overlay for the freeze-and-clone benchmark")
	n := flag.Int("n", 21, "repetitions for overlay creation")
	rounds := flag.Int("rounds", 3, "repetitions for flatten (median reported)")
	flag.Parse()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		log.Fatalf("qemu-img not found: install qemu-utils: %v", err)
	}
	tmp, err := os.MkdirTemp(*dir, "qcow2-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer func() {
		// must and runQemu panic on failure, so the temp dir is always
		// removed.
		os.RemoveAll(tmp)
		if r := recover(); r != nil {
			log.Fatal(r)
		}
	}()

	fmt.Printf("qcow2 benchmark in %s\n\n", tmp)
	flatten(tmp, *dataMiB<<20, *rounds)
	createOverlays(tmp, *n)
	freezeAndClone(tmp, []int64{100 << 20, *bigMiB << 20})
}

// writeData fills [off, off+n) of img with incompressible data.
func writeData(img *qcow2.Image, off, n int64, seed byte) {
	buf := make([]byte, 4<<20)
	x := uint64(seed)*0x9e3779b97f4a7c15 + 1
	for i := range buf {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		buf[i] = byte(x)
	}
	for pos := int64(0); pos < n; pos += int64(len(buf)) {
		buf[0], buf[1] = byte(pos>>20), byte(pos>>28) // vary each chunk
		l := min(int64(len(buf)), n-pos)
		_, err := img.WriteAt(buf[:l], off+pos)
		must(err)
	}
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func runQemu(args ...string) {
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		panic(fmt.Errorf("qemu-img %v: %v\n%s", args, err, out))
	}
}

func flatten(tmp string, data int64, rounds int) {
	base := filepath.Join(tmp, "flat-base.qcow2")
	top := filepath.Join(tmp, "flat-top.qcow2")
	virt := max(2<<30, 4*data)
	img, err := qcow2.Create(base, qcow2.CreateOptions{Size: virt})
	must(err)
	// Base: 3/4 of the data in two ranges; top: 1/4, half overwriting
	// base data, half new.
	q := data / 4
	writeData(img, 0, 2*q, 1)
	writeData(img, virt/2, q, 2)
	must(img.Close())
	img, err = qcow2.Create(top, qcow2.CreateOptions{BackingFile: filepath.Base(base), BackingFormat: "qcow2"})
	must(err)
	writeData(img, q, q/2, 3)
	writeData(img, virt/4, q/2, 4)
	must(img.Close())

	chain, err := qcow2.Open(top, qcow2.OpenOptions{})
	must(err)
	ext, err := chain.ChainExtents(0, chain.Size())
	must(err)
	must(chain.Close())
	var dataBytes int64
	for _, e := range ext {
		if e.Kind == qcow2.ExtentData {
			dataBytes += e.Length
		}
	}
	fmt.Printf("1) flatten a 2-layer chain (%d MiB virtual, %d MiB of data visible, %d MiB written in total)\n",
		virt>>20, dataBytes>>20, data>>20)
	type variant struct {
		name string
		run  func(out, format string)
	}
	variants := []variant{
		{"ours (fsync)", func(out, format string) {
			must(qcow2.Convert(context.Background(), top, out, qcow2.ConvertOptions{Format: format}))
		}},
		{"ours NoSync", func(out, format string) {
			must(qcow2.Convert(context.Background(), top, out, qcow2.ConvertOptions{Format: format, NoSync: true}))
		}},
		{"qemu-img convert (default: cache=unsafe, no fsync)", func(out, format string) {
			runQemu("convert", "-O", format, top, out)
		}},
		{"qemu-img convert -t writeback (fsync)", func(out, format string) {
			runQemu("convert", "-t", "writeback", "-O", format, top, out)
		}},
	}
	mbps := func(d time.Duration) float64 { return float64(dataBytes) / 1e6 / d.Seconds() }
	for _, format := range []string{"qcow2", "raw"} {
		times := make([][]time.Duration, len(variants))
		for r := 0; r < rounds; r++ {
			for i, v := range variants {
				out := filepath.Join(tmp, "flat-out."+format)
				start := time.Now()
				v.run(out, format)
				times[i] = append(times[i], time.Since(start))
				os.Remove(out)
			}
		}
		med := make([]time.Duration, len(variants))
		fmt.Printf("   -O %s (median of %d):\n", format, rounds)
		for i, v := range variants {
			med[i] = stat.Median(times[i])
			fmt.Printf("      %-52s %7.1f MB/s  (%v)\n", v.name, mbps(med[i]), med[i].Round(time.Millisecond))
		}
		fmt.Printf("      throughput ratio, same durability: NoSync/qemu default %.2f, fsync/qemu -t writeback %.2f; fsync/qemu default %.2f\n",
			med[2].Seconds()/med[1].Seconds(), med[3].Seconds()/med[0].Seconds(), med[2].Seconds()/med[0].Seconds())
	}
	os.Remove(top)
	os.Remove(base)
	fmt.Println()
}

func createOverlays(tmp string, n int) {
	base := filepath.Join(tmp, "ov-base.qcow2")
	img, err := qcow2.Create(base, qcow2.CreateOptions{Size: 8 << 30})
	must(err)
	writeData(img, 0, 16<<20, 5)
	must(img.Close())
	var ours, theirs []time.Duration
	for i := 0; i < n; i++ {
		p := filepath.Join(tmp, fmt.Sprintf("ov-ours-%d.qcow2", i))
		start := time.Now()
		img, err := qcow2.Create(p, qcow2.CreateOptions{BackingFile: base, BackingFormat: "qcow2"})
		must(err)
		must(img.Close())
		ours = append(ours, time.Since(start))

		p = filepath.Join(tmp, fmt.Sprintf("ov-qemu-%d.qcow2", i))
		start = time.Now()
		runQemu("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", p)
		theirs = append(theirs, time.Since(start))
	}
	fmt.Printf("2) create an overlay (median of %d; ours includes fsync, qemu-img includes process start)\n", n)
	fmt.Printf("   ours %v   qemu-img create %v\n\n", stat.Median(ours).Round(time.Microsecond), stat.Median(theirs).Round(time.Microsecond))
}

func freezeAndClone(tmp string, sizes []int64) {
	fmt.Println("3) freeze and clone: rename the writable overlay into an immutable base, create two overlays on it")
	blank := filepath.Join(tmp, "fc-blank.qcow2")
	img, err := qcow2.Create(blank, qcow2.CreateOptions{Size: 16 << 30})
	must(err)
	must(img.Close())
	for k, size := range sizes {
		disk := filepath.Join(tmp, fmt.Sprintf("fc-disk-%d.qcow2", k))
		img, err := qcow2.Create(disk, qcow2.CreateOptions{BackingFile: filepath.Base(blank), BackingFormat: "qcow2"})
		must(err)
		writeData(img, 0, size, 6)
		must(img.Close())

		frozen := filepath.Join(tmp, fmt.Sprintf("fc-frozen-%d.qcow2", k))
		start := time.Now()
		must(os.Rename(disk, frozen))
		must(os.Chmod(frozen, 0o444))
		renamed := time.Since(start)
		for i := 0; i < 2; i++ {
			c, err := qcow2.Create(filepath.Join(tmp, fmt.Sprintf("fc-clone-%d-%d.qcow2", k, i)),
				qcow2.CreateOptions{BackingFile: filepath.Base(frozen), BackingFormat: "qcow2"})
			must(err)
			must(c.Close())
		}
		d, err := os.Open(tmp)
		must(err)
		must(d.Sync()) // make the rename and new entries durable
		d.Close()
		total := time.Since(start)
		verdict := "OK (< 50 ms)"
		if total >= 50*time.Millisecond {
			verdict = "SLOW (>= 50 ms)"
		}
		fmt.Printf("   overlay with %5d MiB written: rename %v, rename+2 overlays+dir fsync %v  %s\n",
			size>>20, renamed.Round(time.Microsecond), total.Round(time.Microsecond), verdict)
		os.Chmod(frozen, 0o644)
		os.Remove(frozen)
	}
}

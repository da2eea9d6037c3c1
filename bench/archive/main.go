// Command archive measures `boxctl export` and `boxctl import` of a box
// whose disk holds -mib MiB of written data (half random, half text-like),
// against the conventional pipeline on the same disk: `qemu-img convert -O
// qcow2` then `zstd -T0` for export, `zstd -d` then `qemu-img check` and a
// copy into place for import. Throughput is the data written into the box
// divided by the wall time, in MB/s (10^6 bytes).
//
// The box runs on the procvmm test-double VMM (no VM is booted: only the
// storage and archive paths are measured); its disk is filled directly
// through the qcow2 library while the box is stopped.
//
//	go run ./bench/archive -bin bin -test-plugins build/test-plugins [-mib 512] [-n 5] [-dir /var/tmp]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/plugins/storage-qcow2/qcow2"
	"github.com/boxctl/boxctl/test/images/busybox"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding boxctl and its plugins")
	testPlugins := flag.String("test-plugins", "build/test-plugins", "directory holding boxctl-plugin-procvmm")
	mib := flag.Int64("mib", 512, "MiB of data written into the box's disk")
	n := flag.Int("n", 5, "repetitions (median reported)")
	dir := flag.String("dir", "/var/tmp", "directory for the home and the archives")
	flag.Parse()
	for _, tool := range []string{"qemu-img", "zstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			log.Fatalf("%s not found: install qemu-utils and zstd: %v", tool, err)
		}
	}
	if err := run(*bin, *testPlugins, *dir, *mib, *n); err != nil {
		log.Fatal(err)
	}
}

type bench struct {
	boxctl, home, cfg string
	// phases collects boxctl's debug lines on where an export or import
	// spent its time, when set.
	phases *[]string
}

func (b *bench) cli(args ...string) (string, error) {
	cmd := exec.Command(b.boxctl, append([]string{"--home", b.home, "--config", b.cfg}, args...)...)
	cmd.Env = append(os.Environ(), "BOXCTL_LOG=")
	if b.phases != nil {
		cmd.Env = append(cmd.Env, "BOXCTL_LOG=debug")
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("boxctl %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	if b.phases != nil {
		for _, l := range strings.Split(errb.String(), "\n") {
			if i := strings.Index(l, "boxctl: export: "); i >= 0 {
				*b.phases = append(*b.phases, l[i+len("boxctl: "):])
			} else if i := strings.Index(l, "boxctl: import: "); i >= 0 {
				*b.phases = append(*b.phases, l[i+len("boxctl: "):])
			}
		}
	}
	return out.String(), nil
}

func timed(fn func() error) (time.Duration, error) {
	start := time.Now()
	err := fn()
	return time.Since(start), err
}

func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func run(bin, testPlugins, dir string, mib int64, n int) error {
	boxctl, err := filepath.Abs(filepath.Join(bin, "boxctl"))
	if err != nil {
		return err
	}
	procvmm, err := filepath.Abs(filepath.Join(testPlugins, "boxctl-plugin-procvmm"))
	if err != nil {
		return err
	}
	for _, f := range []string{boxctl, procvmm} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s missing: run make build build-test-plugins first", f)
		}
	}
	tmp, err := os.MkdirTemp(dir, "bxarch")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	layout := filepath.Join(tmp, "busybox")
	if _, err := busybox.BuildLayout(layout, busybox.Options{}); err != nil {
		return err
	}
	b := &bench{boxctl: boxctl, home: filepath.Join(tmp, "h"), cfg: filepath.Join(tmp, "config.hcl")}
	if err := os.WriteFile(b.cfg, []byte(fmt.Sprintf("vmm = \"procvmm\"\nplugin \"procvmm\" {\n  path = %q\n}\n", procvmm)), 0o644); err != nil {
		return err
	}
	id, err := b.cli("create", "--name", "src", "--disk-size", "4GiB", "oci-layout:"+layout)
	if err != nil {
		return err
	}
	id = strings.TrimSpace(id)
	for _, step := range []string{"start", "stop"} {
		if _, err := b.cli(step, "src"); err != nil {
			return err
		}
	}
	disk := filepath.Join(b.home, "plugins-data", "qcow2", "disks", id+".qcow2")
	if err := fill(disk, mib<<20); err != nil {
		return err
	}
	data := float64(mib<<20) / 1e6
	mbps := func(d time.Duration) string {
		return fmt.Sprintf("%6.0f MB/s (%s)", data/d.Seconds(), d.Round(time.Millisecond))
	}
	fmt.Printf("== box archive: %d MiB written into the box's disk (half random, half text), median of %d ==\n", mib, n)

	archive := filepath.Join(tmp, "src.boxar")
	var exp, imp, qexp, qimp []time.Duration
	var phases []string
	for i := 0; i < n; i++ {
		b.phases = nil
		if i == n-1 {
			b.phases = &phases
		}
		os.Remove(archive)
		d, err := timed(func() error { _, err := b.cli("export", "src", archive); return err })
		if err != nil {
			return err
		}
		exp = append(exp, d)
		name := fmt.Sprintf("imp%d", i)
		d, err = timed(func() error { _, err := b.cli("import", archive, "--name", name); return err })
		if err != nil {
			return err
		}
		imp = append(imp, d)
		b.phases = nil
		if _, err := b.cli("rm", name); err != nil {
			return err
		}

		flat, zst, back := filepath.Join(tmp, "flat.qcow2"), filepath.Join(tmp, "flat.qcow2.zst"), filepath.Join(tmp, "back.qcow2")
		for _, f := range []string{flat, zst, back} {
			os.Remove(f)
		}
		d, err = timed(func() error {
			if err := sh("qemu-img", "convert", "-O", "qcow2", disk, flat); err != nil {
				return err
			}
			return sh("zstd", "-q", "-T0", "-3", flat, "-o", zst)
		})
		if err != nil {
			return err
		}
		qexp = append(qexp, d)
		placed := filepath.Join(b.home, "plugins-data", "qcow2", "disks", "baseline.qcow2")
		d, err = timed(func() error {
			if err := sh("zstd", "-q", "-d", zst, "-o", back); err != nil {
				return err
			}
			if err := sh("qemu-img", "check", "-q", back); err != nil {
				return err
			}
			return sh("cp", "--reflink=auto", back, placed)
		})
		os.Remove(placed)
		if err != nil {
			return err
		}
		qimp = append(qimp, d)
	}
	fi, _ := os.Stat(archive)
	zi, _ := os.Stat(filepath.Join(tmp, "flat.qcow2.zst"))
	fmt.Printf("boxctl export BOX FILE:                       %s, archive %d MiB\n", mbps(stat.Median(exp)), fi.Size()>>20)
	fmt.Printf("qemu-img convert -O qcow2 + zstd -T0 -3:      %s, %d MiB\n", mbps(stat.Median(qexp)), zi.Size()>>20)
	fmt.Printf("boxctl import FILE:                           %s\n", mbps(stat.Median(imp)))
	fmt.Printf("zstd -d + qemu-img check + cp --reflink=auto: %s\n", mbps(stat.Median(qimp)))
	fmt.Println("(boxctl fsyncs the flattened disk and the archive; qemu-img convert and zstd do not. Warm page cache.)")
	fmt.Println("where the last run's time went:")
	for _, p := range phases {
		fmt.Println("  " + p)
	}
	return nil
}

// fill writes size bytes into the qcow2 disk at path from 1 GiB on, in 1
// MiB chunks alternating random bytes (compressed files, binaries) and
// text-like bytes (logs, sources), as a box's writes would look.
func fill(path string, size int64) error {
	img, err := qcow2.Open(path, qcow2.OpenOptions{Writable: true})
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewSource(1))
	words := strings.Fields("the box wrote this line of log output with a request id and a timestamp and some status codes 200 404 GET POST /api/v1/items user agent")
	chunk := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		if (off>>20)%2 == 0 {
			rng.Read(chunk)
		} else {
			var buf bytes.Buffer
			for buf.Len() < len(chunk) {
				fmt.Fprintf(&buf, "%d %s %s %d\n", rng.Intn(1e9), words[rng.Intn(len(words))], words[rng.Intn(len(words))], rng.Intn(1000))
			}
			copy(chunk, buf.Bytes())
		}
		if _, err := img.WriteAt(chunk, 1<<30+off); err != nil {
			img.Close()
			return err
		}
	}
	return img.Close()
}

// Command genseeds regenerates the FuzzOpen seed corpus: small images made
// by qemu-img and by package qcow2, plus truncated and corrupted variants.
// Run from the repository root: go run ./plugins/storage-qcow2/qcow2/testdata/genseeds
package main

import (
	"crypto/sha256"
	"fmt"
	"log"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/boxctl/boxctl/plugins/storage-qcow2/qcow2"
)

func main() {
	out := "plugins/storage-qcow2/qcow2/testdata/fuzz/FuzzOpen"
	if err := os.MkdirAll(out, 0o755); err != nil {
		log.Fatal(err)
	}
	tmp, err := os.MkdirTemp("", "genseeds")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	var images [][]byte
	qemu := func(name string, create []string, io ...string) {
		p := filepath.Join(tmp, name)
		args := append([]string{"create", "-q", "-f", "qcow2"}, create...)
		if n := len(args); args[n-1][0] >= '0' && args[n-1][0] <= '9' { // size goes last
			args = append(args[:n-1], p, args[n-1])
		} else {
			args = append(args, p)
		}
		run("qemu-img", args...)
		if len(io) > 0 {
			args := []string{"-f", "qcow2"}
			for _, c := range io {
				args = append(args, "-c", c)
			}
			run("qemu-io", append(args, p)...)
		}
		images = append(images, read(p))
	}
	qemu("v3.qcow2", []string{"-o", "cluster_size=512", "64k"}, "write -P 0xab 0 3k", "write -z 8k 1k", "write -z -u 2k 512")
	qemu("v2.qcow2", []string{"-o", "cluster_size=512,compat=0.10", "64k"}, "write -P 0x12 1k 2k")
	qemu("ref1.qcow2", []string{"-o", "cluster_size=512,refcount_bits=1", "32k"}, "write -P 0x34 0 1k")
	qemu("ref64.qcow2", []string{"-o", "cluster_size=512,refcount_bits=64", "32k"}, "write -P 0x56 512 1k")
	qemu("backing.qcow2", []string{"-o", "cluster_size=512", "-b", "v3.qcow2", "-F", "qcow2"}, "write -P 1 0 512")
	qemu("lazy.qcow2", []string{"-o", "cluster_size=512,lazy_refcounts=on", "16k"}, "write -P 2 0 1k")
	qemu("zstd.qcow2", []string{"-o", "cluster_size=512,compression_type=zstd", "16k"})
	qemu("l2ext.qcow2", []string{"-o", "cluster_size=16k,extended_l2=on", "64k"})

	// Compressed clusters.
	raw := filepath.Join(tmp, "c.raw")
	data := make([]byte, 16<<10)
	for i := range data {
		data[i] = byte(i / 100)
	}
	os.WriteFile(raw, data, 0o644)
	cq := filepath.Join(tmp, "c.qcow2")
	run("qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=512", raw, cq)
	images = append(images, read(cq))

	// Ours.
	for i, opts := range []qcow2.CreateOptions{
		{Size: 64 << 10, ClusterSize: 512},
		{Size: 256 << 10, ClusterSize: 512, RefcountBits: 4},
		{Size: 64 << 10, ClusterSize: 1024, RefcountBits: 32},
	} {
		p := filepath.Join(tmp, fmt.Sprintf("ours%d.qcow2", i))
		img, err := qcow2.Create(p, opts)
		if err != nil {
			log.Fatal(err)
		}
		img.WriteAt([]byte("hello qcow2"), 700)
		img.WriteAt(make([]byte, 3000), 10000)
		img.WriteAt([]byte{1, 2, 3}, opts.Size-3)
		if err := img.Close(); err != nil {
			log.Fatal(err)
		}
		images = append(images, read(p))
	}

	r := rand.New(rand.NewSource(1))
	var seeds [][]byte
	for _, img := range images {
		seeds = append(seeds, img[:min(len(img), 120)])
		if len(img) > 8<<10 {
			// Keep the corpus small: large images only as a header.
			seeds = append(seeds, img[:4096])
			continue
		}
		seeds = append(seeds, img, img[:len(img)/2])
		for k := 0; k < 3; k++ {
			c := append([]byte(nil), img...)
			for n := 0; n < 4; n++ {
				c[r.Intn(len(c))] ^= byte(1 << r.Intn(8))
			}
			seeds = append(seeds, c)
		}
	}
	for _, s := range seeds {
		sum := sha256.Sum256(s)
		name := filepath.Join(out, fmt.Sprintf("%x", sum[:8]))
		body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(s)) + ")\n"
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("wrote %d seeds to %s\n", len(seeds), out)
}

func run(name string, args ...string) {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		log.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func read(p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		log.Fatal(err)
	}
	return b
}

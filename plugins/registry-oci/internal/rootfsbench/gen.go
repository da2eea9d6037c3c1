package main

import (
	"archive/tar"
	"fmt"
	"math"
	"math/rand"
	"sort"
	"strings"

	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

// genSpec describes the synthetic image.
type genSpec struct {
	totalBytes int64
	files      int
	layers     int
	seed       int64
}

type genFile struct {
	path string
	size int64
	text bool
}

var words = strings.Fields(`the of and to in is for on with as by at from that this be are or an it not
func return if err nil package import type struct interface string int byte error case switch default
include define static const void char unsigned long double float while break continue goto sizeof
def class self lambda yield async await try except finally raise pass none true false print len range
#!/bin/sh echo export PATH HOME USER set -e fi then else elif done do esac local readonly shift
<html> <div> </div> <span> class="x" href="/" { } [ ] ( ) ; : = == != <= >= && || + - * / % 0 1 2 42 0xff`)

// sizes draws a log-normal file size distribution (median ~2 KiB, a long
// tail of large files), scaled so the sizes sum to total.
func sizes(r *rand.Rand, n int, total int64) []int64 {
	raw := make([]float64, n)
	var sum float64
	for i := range raw {
		raw[i] = math.Exp(math.Log(2048) + 1.9*r.NormFloat64())
		if raw[i] > 24<<20 {
			raw[i] = 24 << 20
		}
		sum += raw[i]
	}
	out := make([]int64, n)
	for i, v := range raw {
		out[i] = int64(v / sum * float64(total))
	}
	return out
}

// textData is source-code-like text (compresses ~3-4x).
func textData(r *rand.Rand, n int64) []byte {
	var b strings.Builder
	b.Grow(int(n) + 16)
	col := 0
	for int64(b.Len()) < n {
		w := words[r.Intn(len(words))]
		b.WriteString(w)
		col += len(w) + 1
		if col > 60+r.Intn(30) {
			b.WriteByte('\n')
			col = 0
		} else {
			b.WriteByte(' ')
		}
	}
	return []byte(b.String()[:n])
}

// binData is binary-like: random bytes interleaved with repeated runs and
// zero padding, like executables and libraries (compresses ~1.5-2x).
func binData(r *rand.Rand, n int64) []byte {
	out := make([]byte, n)
	for i := int64(0); i < n; {
		chunk := int64(256 + r.Intn(4096))
		if i+chunk > n {
			chunk = n - i
		}
		switch r.Intn(3) {
		case 0:
			r.Read(out[i : i+chunk])
		case 1: // zeros
		default:
			if i >= chunk {
				copy(out[i:i+chunk], out[i-chunk:i])
			} else {
				r.Read(out[i : i+chunk])
			}
		}
		i += chunk
	}
	return out
}

// genLayers builds the layers' tar entries. The bottom layers get most
// files; the top layer also deletes, replaces and re-links lower content,
// like a typical "apt-get upgrade && cleanup" layer.
func genLayers(spec genSpec) ([][]ti.Entry, int64, int) {
	r := rand.New(rand.NewSource(spec.seed))
	sz := sizes(r, spec.files, spec.totalBytes)
	var dirs []string
	for i := 0; i < spec.files/20+1; i++ {
		depth := 1 + r.Intn(4)
		parts := []string{[]string{"usr/lib", "usr/share", "opt/app", "var/lib", "etc"}[r.Intn(5)]}
		for d := 0; d < depth; d++ {
			parts = append(parts, fmt.Sprintf("d%03d", r.Intn(40)))
		}
		dirs = append(dirs, strings.Join(parts, "/"))
	}
	exts := []string{".py", ".go", ".so", ".txt", ".h", ".json", "", ".bin", ".conf", ".html"}
	var files []genFile
	seen := map[string]bool{}
	for i := 0; i < spec.files; i++ {
		var p string
		for {
			p = fmt.Sprintf("%s/f%05d%s", dirs[r.Intn(len(dirs))], i, exts[r.Intn(len(exts))])
			if !seen[p] {
				break
			}
		}
		seen[p] = true
		files = append(files, genFile{path: p, size: sz[i], text: sz[i] < 1<<20 && r.Intn(10) < 6})
	}
	// Layer shares of the files, bottom first.
	shares := []float64{0.45, 0.30, 0.15, 0.10}
	if spec.layers != 4 {
		shares = nil
		for i := 0; i < spec.layers; i++ {
			shares = append(shares, 1/float64(spec.layers))
		}
	}
	layers := make([][]ti.Entry, spec.layers)
	var total int64
	count := 0
	idx := 0
	var lower []genFile
	for li := range layers {
		n := int(shares[li] * float64(spec.files))
		if li == len(layers)-1 {
			n = len(files) - idx
		}
		mine := files[idx : idx+n]
		idx += n
		dset := map[string]bool{}
		for _, f := range mine {
			for d := parentDir(f.path); d != ""; d = parentDir(d) {
				dset[d] = true
			}
		}
		ds := make([]string, 0, len(dset))
		for d := range dset {
			ds = append(ds, d)
		}
		sort.Strings(ds)
		for _, d := range ds {
			layers[li] = append(layers[li], ti.Dir(d))
		}
		if li == len(layers)-1 && len(lower) > 0 {
			// Delete and replace some lower files.
			for k := 0; k < len(lower)/100; k++ {
				f := lower[r.Intn(len(lower))]
				layers[li] = append(layers[li], ti.Whiteout(f.path))
			}
			for k := 0; k < len(lower)/200; k++ {
				f := lower[r.Intn(len(lower))]
				data := textData(r, 1+f.size/2)
				layers[li] = append(layers[li], ti.Entry{Name: f.path, Type: tar.TypeReg, Mode: 0o644, Data: data})
			}
		}
		for k, f := range mine {
			var data []byte
			if f.text {
				data = textData(r, f.size)
			} else {
				data = binData(r, f.size)
			}
			e := ti.Entry{Name: f.path, Type: tar.TypeReg, Mode: 0o644, Data: data}
			if !f.text {
				e.Mode = 0o755
			}
			if k%997 == 0 {
				e = e.WithXattrs(map[string]string{"user.bench": "x"})
			}
			layers[li] = append(layers[li], e)
			total += f.size
			count++
			// Some hardlinks and symlinks, as in real distributions.
			switch r.Intn(60) {
			case 0:
				layers[li] = append(layers[li], ti.Hardlink(f.path+".hl", f.path))
			case 1, 2:
				layers[li] = append(layers[li], ti.Symlink(f.path+".lnk", baseName(f.path)))
			}
		}
		lower = append(lower, mine...)
	}
	return layers, total, count
}

func parentDir(p string) string {
	i := strings.LastIndex(p, "/")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func baseName(p string) string { return p[strings.LastIndex(p, "/")+1:] }

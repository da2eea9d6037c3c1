package flatten_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/flatten"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

// bigText is n bytes of text unique to tag at every line, so that a chunk
// delivered out of order or twice shows up as a content mismatch.
func bigText(tag string, n int) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%s line %08d\n", tag, i)
	}
	return b.String()[:n]
}

// openCounter tracks that every blob the stream pass opens is closed again.
type openCounter struct {
	mu           sync.Mutex
	opens, close int
}

type countedBlob struct {
	io.Reader
	c *openCounter
}

func (b countedBlob) Close() error {
	b.c.mu.Lock()
	b.c.close++
	b.c.mu.Unlock()
	return nil
}

func (c *openCounter) wrap(ls []flatten.Layer) {
	for i := range ls {
		open := ls[i].Open
		ls[i].Open = func() (io.ReadCloser, error) {
			r, err := open()
			if err != nil {
				return nil, err
			}
			c.mu.Lock()
			c.opens++
			c.mu.Unlock()
			return countedBlob{r, c}, nil
		}
	}
}

func (c *openCounter) check(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opens == 0 || c.opens != c.close {
		t.Errorf("%d blobs opened, %d closed", c.opens, c.close)
	}
}

// readTar returns the regular files of a tar stream by name.
func readTar(t *testing.T, b []byte) map[string]string {
	t.Helper()
	files := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("read flattened tar: %v", err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := files[hdr.Name]; dup {
			t.Errorf("%s appears twice", hdr.Name)
		}
		files[hdr.Name] = string(data)
	}
}

// More layers than decompressors, layers larger than the read-ahead queue
// (so producers block on a full queue), and a bottom layer whose large
// tail is not needed (so its producer is stopped mid-stream): the
// flattened stream must hold exactly the final tree.
func TestReadAheadManyLargeLayers(t *testing.T) {
	const big = 20 << 20 // more than the 16 MiB a layer may run ahead
	want := map[string]string{}
	var layers []*ti.Layer
	add := func(entries ...ti.Entry) {
		layers = append(layers, ti.NewLayer(entries, ti.Gzip))
	}
	add(ti.File("keep0", "k0"), ti.File("big0", bigText("L0", big)), ti.File("gone0", "g0"))
	add(ti.File("big1", bigText("L1", big)))
	add(ti.File("mid2", bigText("L2", 3<<20)), ti.File("small2", "s2"))
	for i := 3; i < 9; i++ {
		add(ti.File(fmt.Sprintf("f%d", i), fmt.Sprintf("layer %d", i)), ti.File("same", fmt.Sprintf("from %d", i)))
		want[fmt.Sprintf("f%d", i)] = fmt.Sprintf("layer %d", i)
	}
	add(ti.File("big0", "replaced"), ti.Whiteout("gone0"), ti.Whiteout("small2"))
	want["keep0"], want["big0"], want["big1"], want["mid2"], want["same"] = "k0", "replaced", bigText("L1", big), bigText("L2", 3<<20), "from 8"

	ls := stack(t, layers...)
	var c openCounter
	c.wrap(ls)
	p, err := flatten.NewPlan(ls)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := p.WriteTar(context.Background(), &out); err != nil {
		t.Fatalf("WriteTar: %v", err)
	}
	c.check(t)
	got := readTar(t, out.Bytes())
	for name, w := range want {
		if g, ok := got[name]; !ok {
			t.Errorf("%s missing", name)
		} else if g != w {
			t.Errorf("%s: %d bytes, want %d bytes (content differs)", name, len(g), len(w))
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected file %s", name)
		}
	}
}

// cancelAfter cancels the build once n bytes of the stream were written.
type cancelAfter struct {
	n      int
	cancel context.CancelFunc
}

func (w *cancelAfter) Write(p []byte) (int, error) {
	w.n -= len(p)
	if w.n <= 0 {
		w.cancel()
	}
	return len(p), nil
}

func TestReadAheadCancelStopsAndClosesEverything(t *testing.T) {
	var layers []*ti.Layer
	for i := 0; i < 5; i++ {
		layers = append(layers, ti.NewLayer([]ti.Entry{ti.File(fmt.Sprintf("big%d", i), bigText(fmt.Sprint(i), 4<<20))}, ti.Gzip))
	}
	ls := stack(t, layers...)
	var c openCounter
	c.wrap(ls)
	p, err := flatten.NewPlan(ls)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = p.WriteTar(ctx, &cancelAfter{n: 1 << 20, cancel: cancel})
	if !errors.Is(err, context.Canceled) || errors.Is(err, errdefs.ErrBadImage) {
		t.Fatalf("WriteTar after cancel: %v, want context.Canceled and not a bad image", err)
	}
	c.check(t)
}

func TestReadAheadLayerErrorsNameTheLayer(t *testing.T) {
	mk := func() []*ti.Layer {
		var layers []*ti.Layer
		for i := 0; i < 4; i++ {
			layers = append(layers, ti.NewLayer([]ti.Entry{ti.File(fmt.Sprintf("f%d", i), bigText(fmt.Sprint(i), 1<<20))}, ti.Gzip))
		}
		return layers
	}
	t.Run("truncated blob", func(t *testing.T) {
		layers := mk()
		ls := stack(t, layers...)
		blob := layers[2].Blob()
		ls[2].Open = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(blob[:len(blob)/2])), nil }
		p, err := flatten.NewPlan(ls)
		if err != nil {
			t.Fatal(err)
		}
		err = p.WriteTar(context.Background(), io.Discard)
		if err == nil || !strings.Contains(err.Error(), layers[2].MustDigest().String()) {
			t.Fatalf("WriteTar: %v, want an error naming layer 3", err)
		}
	})
	t.Run("blob cannot be opened", func(t *testing.T) {
		layers := mk()
		ls := stack(t, layers...)
		ls[3].Open = func() (io.ReadCloser, error) { return nil, errors.New("disk on fire") }
		p, err := flatten.NewPlan(ls)
		if err != nil {
			t.Fatal(err)
		}
		err = p.WriteTar(context.Background(), io.Discard)
		if err == nil || !strings.Contains(err.Error(), "disk on fire") || !strings.Contains(err.Error(), layers[3].MustDigest().String()) {
			t.Fatalf("WriteTar: %v, want the open error naming layer 4", err)
		}
	})
}

package tarsafe

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostileSpecials is what a guest can put in a tar to plant devices and set-id programs.
func hostileSpecials(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Unix(1700000000, 0)
	for _, h := range []*tar.Header{
		{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "d/dev/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "d/dev/sda", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8, Devminor: 0},
		{Name: "d/dev/mem", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 1},
		{Name: "d/fifo", Typeflag: tar.TypeFifo, Mode: 0o666},
		{Name: "d/suid", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 2},
		{Name: "d/sgid", Typeflag: tar.TypeReg, Mode: 0o2755, Size: 2},
		{Name: "d/shared/", Typeflag: tar.TypeDir, Mode: 0o2775},
		{Name: "d/shared/f", Typeflag: tar.TypeReg, Mode: 0o6777, Size: 2},
	} {
		h.ModTime = mt
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("#!"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func hostOpts(skipped *[]Skipped) ExtractOptions {
	return ExtractOptions{SkipSpecialFiles: true, ClearSetID: true, OnSkip: func(s Skipped) { *skipped = append(*skipped, s) }}
}

func TestExtractHostPolicySkipsSpecialFilesAndClearsSetID(t *testing.T) {
	resolvers(t, func(t *testing.T, res resolver) {
		dest := t.TempDir()
		var skipped []Skipped
		st, err := extract(context.Background(), res, bytes.NewReader(hostileSpecials(t)), dest, hostOpts(&skipped))
		if err != nil {
			t.Fatal(err)
		}
		want := []Skipped{{"d/dev/sda", "block device 8:0"}, {"d/dev/mem", "character device 1:1"}, {"d/fifo", "FIFO"}}
		if !slices.Equal(skipped, want) {
			t.Errorf("skipped = %v, want %v", skipped, want)
		}
		if st.Skipped != 3 || st.Entries != 6 {
			t.Errorf("stats = %+v, want 6 entries and 3 skipped", st)
		}
		for _, p := range []string{"d/dev/sda", "d/dev/mem", "d/fifo"} {
			if _, err := os.Lstat(filepath.Join(dest, p)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s exists on the host (%v)", p, err)
			}
		}
		for p, perm := range map[string]os.FileMode{"d/suid": 0o755, "d/sgid": 0o755, "d/shared": 0o775, "d/shared/f": 0o777} {
			fi, err := os.Lstat(filepath.Join(dest, p))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 || fi.Mode().Perm() != perm {
				t.Errorf("%s mode = %v, want %v without set-id bits", p, fi.Mode(), perm)
			}
		}
	})
}

func TestExtractSetIDStaysClearedWithOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("keeping owners needs root")
	}
	dest := t.TempDir()
	var skipped []Skipped
	opts := hostOpts(&skipped)
	opts.PreserveOwner = true
	if _, err := Extract(context.Background(), bytes.NewReader(hostileSpecials(t)), dest, opts); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"d/suid", "d/sgid", "d/shared", "d/shared/f"} {
		fi, err := os.Lstat(filepath.Join(dest, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			t.Errorf("%s mode = %v: set-id bit kept", p, fi.Mode())
		}
	}
}

// TestExtractDefaultKeepsSpecialFiles pins the behaviour the guest agent relies on: inside a
// VM devices, FIFOs and set-id bits are extracted as they are.
func TestExtractDefaultKeepsSpecialFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating device nodes needs root")
	}
	dest := t.TempDir()
	st, err := Extract(context.Background(), bytes.NewReader(hostileSpecials(t)), dest, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 0 || st.Entries != 9 {
		t.Errorf("stats = %+v", st)
	}
	var sda unix.Stat_t
	if err := unix.Lstat(filepath.Join(dest, "d/dev/sda"), &sda); err != nil {
		t.Fatal(err)
	}
	if sda.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(sda.Rdev) != 8 || sda.Mode&0o777 != 0o666 {
		t.Errorf("d/dev/sda: mode %o rdev %d:%d", sda.Mode, unix.Major(sda.Rdev), unix.Minor(sda.Rdev))
	}
	fi, err := os.Lstat(filepath.Join(dest, "d/fifo"))
	if err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("d/fifo: %v, %v", fi, err)
	}
	fi, err = os.Lstat(filepath.Join(dest, "d/suid"))
	if err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Errorf("d/suid: %v, %v", fi, err)
	}
	fi, err = os.Lstat(filepath.Join(dest, "d/shared"))
	if err != nil || fi.Mode()&os.ModeSetgid == 0 {
		t.Errorf("d/shared: %v, %v", fi, err)
	}
}

func TestExtractOwnership(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "dir/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 1000, Gid: 1000},
		{Name: "dir/f", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000, Gid: 1000, Size: 1},
		{Name: "dir/l", Typeflag: tar.TypeSymlink, Linkname: "f", Mode: 0o777, Uid: 1000, Gid: 1000},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write([]byte("x")[:h.Size])
	}
	_ = tw.Close()
	owners := func(dest string) map[string][2]uint32 {
		out := map[string][2]uint32{}
		for _, p := range []string{"dir", "dir/f", "dir/l"} {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(dest, p), &st); err != nil {
				t.Fatal(err)
			}
			out[p] = [2]uint32{st.Uid, st.Gid}
		}
		return out
	}

	dest := t.TempDir()
	if _, err := Extract(context.Background(), bytes.NewReader(buf.Bytes()), dest, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	me := [2]uint32{uint32(os.Geteuid()), uint32(os.Getegid())}
	for p, o := range owners(dest) {
		if o != me {
			t.Errorf("without PreserveOwner %s is owned by %v, want the extracting user %v", p, o, me)
		}
	}

	dest = t.TempDir()
	_, err := Extract(context.Background(), bytes.NewReader(buf.Bytes()), dest, ExtractOptions{PreserveOwner: true})
	if os.Geteuid() != 0 {
		if err == nil || !errors.Is(err, unix.EPERM) {
			t.Fatalf("PreserveOwner as an unprivileged user: %v, want EPERM", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	for p, o := range owners(dest) {
		if o != [2]uint32{1000, 1000} {
			t.Errorf("with PreserveOwner %s is owned by %v, want 1000:1000", p, o)
		}
	}
}

// zeroReader yields n zero bytes.
type zeroReader struct{ n int64 }

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	k := min(int64(len(p)), z.n)
	clear(p[:k])
	z.n -= k
	return int(k), nil
}

// sparseTar streams a tar whose files are given as data/zero segments, the way a tar carries
// a sparse file (holes as zeros), without building it in memory.
func sparseTar(files map[string][]segment) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		names := make([]string, 0, len(files))
		for n := range files {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, name := range names {
			var size int64
			for _, s := range files[name] {
				size += s.len()
			}
			if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
				pw.CloseWithError(err)
				return
			}
			for _, s := range files[name] {
				var r io.Reader = &zeroReader{n: s.zeros}
				if s.data != nil {
					r = bytes.NewReader(s.data)
				}
				if _, err := io.Copy(tw, r); err != nil {
					pw.CloseWithError(err)
					return
				}
			}
		}
		pw.CloseWithError(tw.Close())
	}()
	return pr
}

type segment struct {
	data  []byte
	zeros int64
}

func (s segment) len() int64 { return int64(len(s.data)) + s.zeros }

func TestExtractKeepsHolesSparse(t *testing.T) {
	const mib = 1 << 20
	data := bytes.Repeat([]byte("data"), 1024) // 4 KiB
	files := map[string][]segment{
		// A file that is one big hole but for its first block.
		"hole-at-end": {{data: data}, {zeros: 64*mib - 4096}},
		"hole-inside": {{data: data}, {zeros: 16 * mib}, {data: data}},
		// Sizes that are not whole blocks: the last partial block is a hole or data.
		"zeros-odd-size": {{zeros: 3*4096 + 100}},
		"data-after-odd": {{zeros: 10000}, {data: []byte("end")}},
		"dense":          {{data: bytes.Repeat([]byte{1}, 3*mib+7)}},
	}
	dest := t.TempDir()
	st, err := Extract(context.Background(), sparseTar(files), dest, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for name, segs := range files {
		var want int64
		for _, s := range segs {
			want += s.len()
		}
		total += want
		p := filepath.Join(dest, name)
		var fst unix.Stat_t
		if err := unix.Stat(p, &fst); err != nil {
			t.Fatal(err)
		}
		if fst.Size != want {
			t.Errorf("%s: size %d, want %d", name, fst.Size, want)
		}
		var dataLen int64
		for _, s := range segs {
			dataLen += int64(len(s.data))
		}
		// Allocation is in filesystem blocks; allow a block per data segment and some
		// metadata, nowhere near the holes' size.
		if alloc := fst.Blocks * 512; alloc > dataLen+int64(len(segs))*64<<10+64<<10 {
			t.Errorf("%s: %d bytes allocated for %d bytes of data: holes were written", name, alloc, dataLen)
		}
		// The content is what the tar said, holes reading as zeros.
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range segs {
			got := make([]byte, s.len())
			if _, err := io.ReadFull(f, got); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			want := s.data
			if want == nil {
				want = make([]byte, s.zeros)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s: content differs", name)
			}
		}
		f.Close()
	}
	if st.Bytes != uint64(total) {
		t.Errorf("stats.Bytes = %d, want %d", st.Bytes, total)
	}
}

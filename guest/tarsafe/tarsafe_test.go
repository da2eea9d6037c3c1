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
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// entry describes one tar entry for building test archives.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func file(name, body string) entry {
	return entry{name: name, body: body, typ: tar.TypeReg, mode: 0o644}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) entry {
	return entry{name: name, link: target, typ: tar.TypeSymlink, mode: 0o777}
}
func hardlink(name, target string) entry {
	return entry{name: name, link: target, typ: tar.TypeLink, mode: 0o644}
}

func mkTar(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link,
			Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// resolvers runs a test with openat2 and with the component-walk fallback.
func resolvers(t *testing.T, fn func(t *testing.T, res resolver)) {
	t.Run("openat2", func(t *testing.T) { fn(t, resolver{}) })
	t.Run("walk", func(t *testing.T) { fn(t, resolver{forceWalk: true}) })
}

// sandbox makes base/dest (extraction target) and base/outside (must stay untouched).
func sandbox(t *testing.T) (dest, outside string) {
	base := t.TempDir()
	dest = filepath.Join(base, "dest")
	outside = filepath.Join(base, "outside")
	for _, d := range []string{dest, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dest, outside
}

func listTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestExtractRefusesHostileTars(t *testing.T) {
	cases := []struct {
		name    string
		entries []entry
		// prepare runs before extraction with the destination and outside directories.
		prepare func(t *testing.T, dest, outside string)
		opts    ExtractOptions
		wantErr error
	}{
		{name: "dotdot", entries: []entry{file("../outside/evil", "x")}, wantErr: ErrEscape},
		{name: "dotdot in middle", entries: []entry{file("a/../../outside/evil", "x")}, wantErr: ErrEscape},
		{name: "absolute symlink then write through it",
			entries: []entry{symlink("link", "OUTSIDE"), file("link/evil", "x")}, wantErr: ErrEscape},
		{name: "relative symlink escaping",
			entries: []entry{symlink("link", "../outside"), file("link/evil", "x")}, wantErr: ErrEscape},
		{name: "symlink chain escaping",
			entries: []entry{dir("d"), symlink("d/up", ".."), symlink("a", "d/up/d/up/../outside"), file("a/evil", "x")},
			wantErr: ErrEscape},
		{name: "symlink directory created by a directory entry path",
			entries: []entry{symlink("link", "../outside"), dir("link/sub")}, wantErr: ErrEscape},
		{name: "hard link to outside by dotdot",
			entries: []entry{hardlink("hl", "../outside/secret")}, wantErr: ErrEscape},
		{name: "hard link through escaping symlink",
			entries: []entry{symlink("s", "OUTSIDE"), hardlink("hl", "s/secret")}, wantErr: ErrEscape},
		{name: "pre-existing symlink in destination",
			prepare: func(t *testing.T, dest, outside string) {
				if err := os.Symlink(outside, filepath.Join(dest, "pre")); err != nil {
					t.Fatal(err)
				}
			},
			entries: []entry{file("pre/evil", "x")}, wantErr: ErrEscape},
		{name: "file over existing symlink without overwrite",
			prepare: func(t *testing.T, dest, outside string) {
				if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dest, "f")); err != nil {
					t.Fatal(err)
				}
			},
			entries: []entry{file("f", "evil")}, wantErr: ErrExists},
		{name: "file over existing symlink with overwrite replaces the link",
			prepare: func(t *testing.T, dest, outside string) {
				if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dest, "f")); err != nil {
					t.Fatal(err)
				}
			},
			opts:    ExtractOptions{Overwrite: true},
			entries: []entry{file("f", "evil")}},
		{name: "file over symlink created in the same tar",
			opts:    ExtractOptions{Overwrite: true},
			entries: []entry{symlink("f", "OUTSIDE/secret"), file("f", "evil")}},
		{name: "file replacing a directory", entries: []entry{dir("d"), file("d", "x")},
			opts: ExtractOptions{Overwrite: true}, wantErr: ErrExists},
		{name: "non-directory naming the destination", entries: []entry{file(".", "x")},
			wantErr: errors.New("any")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resolvers(t, func(t *testing.T, res resolver) {
				dest, outside := sandbox(t)
				if tc.prepare != nil {
					tc.prepare(t, dest, outside)
				}
				entries := make([]entry, len(tc.entries))
				for i, e := range tc.entries {
					e.link = strings.ReplaceAll(e.link, "OUTSIDE", outside)
					entries[i] = e
				}
				_, err := extract(context.Background(), res, bytes.NewReader(mkTar(t, entries...)), dest, tc.opts)
				switch {
				case tc.wantErr == nil && err != nil:
					t.Fatalf("extract: %v", err)
				case tc.wantErr != nil && err == nil:
					t.Fatalf("extract succeeded, want error %v", tc.wantErr)
				case tc.wantErr != nil && tc.wantErr.Error() != "any" && !errors.Is(err, tc.wantErr):
					t.Fatalf("extract error = %v, want %v", err, tc.wantErr)
				}
				var ee *EntryError
				if err != nil && !errors.As(err, &ee) {
					t.Errorf("error %v does not name the entry", err)
				}
				if got := listTree(t, outside); strings.Join(got, ",") != ".,secret" {
					t.Errorf("outside directory changed: %v", got)
				}
				if b, err := os.ReadFile(filepath.Join(outside, "secret")); err != nil || string(b) != "secret" {
					t.Errorf("outside/secret = %q, %v", b, err)
				}
			})
		})
	}
}

func TestExtractLegitimateTree(t *testing.T) {
	resolvers(t, func(t *testing.T, res resolver) {
		dest, _ := sandbox(t)
		tarball := mkTar(t,
			dir("usr/"), dir("usr/lib/"), file("usr/lib/a", "A"),
			symlink("lib", "usr/lib"), file("lib/b", "B"), // write through an inside symlink
			file("/abs/c", "C"), // leading slash is dropped, as tar does
			hardlink("usr/lib/a2", "usr/lib/a"),
			entry{name: "ro/", typ: tar.TypeDir, mode: 0o555}, file("ro/inside", "I"),
			entry{name: "fifo", typ: tar.TypeFifo, mode: 0o600},
			entry{name: "exe", typ: tar.TypeReg, mode: 0o4755, body: "#!"},
		)
		st, err := extract(context.Background(), res, bytes.NewReader(tarball), dest, ExtractOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if st.Entries != 11 || st.Bytes != 6 {
			t.Errorf("stats = %+v, want 11 entries, 6 bytes", st)
		}
		for p, want := range map[string]string{"usr/lib/a": "A", "usr/lib/b": "B", "abs/c": "C", "usr/lib/a2": "A", "ro/inside": "I"} {
			if b, err := os.ReadFile(filepath.Join(dest, p)); err != nil || string(b) != want {
				t.Errorf("%s = %q, %v; want %q", p, b, err, want)
			}
		}
		fi, err := os.Stat(filepath.Join(dest, "ro"))
		if err != nil || fi.Mode().Perm() != 0o555 {
			t.Errorf("ro mode = %v, %v", fi.Mode(), err)
		}
		if !fi.ModTime().Equal(time.Unix(1700000000, 0)) {
			t.Errorf("ro mtime = %v", fi.ModTime())
		}
		fi, err = os.Stat(filepath.Join(dest, "exe"))
		if err != nil || fi.Mode()&os.ModeSetuid == 0 {
			t.Errorf("exe mode = %v, %v", fi.Mode(), err)
		}
		a, _ := os.Stat(filepath.Join(dest, "usr/lib/a"))
		a2, _ := os.Stat(filepath.Join(dest, "usr/lib/a2"))
		if !os.SameFile(a, a2) {
			t.Error("hard link not preserved")
		}
	})
}

func TestExtractWithoutOverwriteRefusesExistingFile(t *testing.T) {
	dest, _ := sandbox(t)
	if err := os.WriteFile(filepath.Join(dest, "f"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Extract(context.Background(), bytes.NewReader(mkTar(t, file("f", "new"))), dest, ExtractOptions{})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("err = %v, want ErrExists", err)
	}
	if _, err := Extract(context.Background(), bytes.NewReader(mkTar(t, file("f", "new"))), dest, ExtractOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "f")); string(b) != "new" {
		t.Errorf("f = %q", b)
	}
}

func TestExtractCorruptTar(t *testing.T) {
	dest, _ := sandbox(t)
	tarball := mkTar(t, file("a", strings.Repeat("x", 2000)))
	_, err := Extract(context.Background(), bytes.NewReader(tarball[:1000]), dest, ExtractOptions{})
	if !errors.Is(err, ErrInvalidTar) {
		t.Fatalf("truncated tar: err = %v, want ErrInvalidTar", err)
	}
}

func TestExtractInRootResolvesDestInsideRoot(t *testing.T) {
	resolvers(t, func(t *testing.T, res resolver) {
		root, outside := sandbox(t)
		// An absolute symlink inside the root must resolve inside it, not on the host.
		if err := os.MkdirAll(filepath.Join(root, "real"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/real", filepath.Join(root, "alias")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(root, "host")); err != nil {
			t.Fatal(err)
		}
		rootfd := openRoot(t, root)
		for _, tc := range []struct{ dir, want string }{
			{"/alias/x", "real/x/f"},
			{"/../../new", "new/f"},
		} {
			fd, err := res.mkdirAll(rootfd, tc.dir, scopeInRoot, 0o755)
			if err != nil {
				t.Fatalf("%s: %v", tc.dir, err)
			}
			x := &extractor{res: res, dirfd: fd}
			if _, err := x.run(context.Background(), bytes.NewReader(mkTar(t, file("f", "F")))); err != nil {
				t.Fatalf("%s: %v", tc.dir, err)
			}
			closeFd(fd)
			resolved := filepath.Join(root, tc.want)
			if b, err := os.ReadFile(resolved); err != nil || string(b) != "F" {
				t.Errorf("%s: %s = %q, %v", tc.dir, resolved, b, err)
			}
		}
		// "host" points at the host's outside directory, which does not exist inside the
		// root: a dangling symlink, not a way out.
		if fd, err := res.mkdirAll(rootfd, "/host/sub", scopeInRoot, 0o755); err == nil {
			closeFd(fd)
			t.Error("mkdirAll through a dangling symlink succeeded")
		}
		if got := listTree(t, outside); strings.Join(got, ",") != ".,secret" {
			t.Errorf("outside directory changed: %v", got)
		}
	})
	// The exported entry point end to end.
	root := t.TempDir()
	if _, err := ExtractInRoot(context.Background(), bytes.NewReader(mkTar(t, file("f", "F"))), root, "/a/b", ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "a/b/f")); err != nil || string(b) != "F" {
		t.Errorf("a/b/f = %q, %v", b, err)
	}
}

func readTar(t *testing.T, b []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		v := string(body)
		switch hdr.Typeflag {
		case tar.TypeDir:
			v = "dir"
		case tar.TypeSymlink:
			v = "-> " + hdr.Linkname
		case tar.TypeLink:
			v = "=> " + hdr.Linkname
		}
		out[hdr.Name] = v
	}
}

func TestArchive(t *testing.T) {
	root := t.TempDir()
	mk := func(p, body string) {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("data/a", "A")
	mk("data/sub/b", "B")
	mk("elsewhere/c", "C")
	if err := os.Link(filepath.Join(root, "data/a"), filepath.Join(root, "data/a-link")); err != nil {
		t.Fatal(err)
	}
	// Absolute: must resolve to root/elsewhere, never the host's /elsewhere.
	if err := os.Symlink("/elsewhere", filepath.Join(root, "data/abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../data", filepath.Join(root, "data/sub/loop")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nope", filepath.Join(root, "data/dangling")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/data", filepath.Join(root, "datalink")); err != nil {
		t.Fatal(err)
	}

	run := func(p string, opts ArchiveOptions) map[string]string {
		var buf bytes.Buffer
		if err := Archive(context.Background(), &buf, root, p, opts); err != nil {
			t.Fatalf("archive %s %+v: %v", p, opts, err)
		}
		return readTar(t, buf.Bytes())
	}
	check := func(got map[string]string, want map[string]string) {
		t.Helper()
		if len(got) != len(want) {
			t.Errorf("got %d entries %v, want %v", len(got), got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s = %q, want %q (all: %v)", k, got[k], v, got)
			}
		}
	}

	check(run("/data", ArchiveOptions{}), map[string]string{
		"a": "A", "a-link": "=> a", "abs": "-> /elsewhere", "dangling": "-> /nope",
		"sub/": "dir", "sub/b": "B", "sub/loop": "-> ../data",
	})
	check(run("data", ArchiveOptions{IncludeParent: true}), map[string]string{
		"data/": "dir", "data/a": "A", "data/a-link": "=> data/a", "data/abs": "-> /elsewhere",
		"data/dangling": "-> /nope", "data/sub/": "dir", "data/sub/b": "B", "data/sub/loop": "-> ../data",
	})
	check(run("/datalink", ArchiveOptions{}), map[string]string{"datalink": "-> /data"})
	// Following: the loop back to data is archived once, the dangling link stays a link.
	check(run("/datalink", ArchiveOptions{FollowSymlinks: true, IncludeParent: true}), map[string]string{
		"datalink/": "dir", "datalink/a": "A", "datalink/a-link": "=> datalink/a",
		"datalink/abs/": "dir", "datalink/abs/c": "C", "datalink/dangling": "-> /nope",
		"datalink/sub/": "dir", "datalink/sub/b": "B", "datalink/sub/loop": "-> ../data",
	})
	check(run("/data/sub/b", ArchiveOptions{}), map[string]string{"b": "B"})
	check(run("/data/sub/b", ArchiveOptions{IncludeParent: true}), map[string]string{"b": "B"})

	var buf bytes.Buffer
	err := Archive(context.Background(), &buf, root, "/missing", ArchiveOptions{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing path: err = %v, want ErrNotExist", err)
	}
}

func TestArchiveExtractRoundTrip(t *testing.T) {
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "tree/x/y"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "tree/x/y/z"), bytes.Repeat([]byte("z"), 100000), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("y/z", filepath.Join(src, "tree/x/zl")); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(Archive(context.Background(), pw, src, "/tree", ArchiveOptions{IncludeParent: true}))
	}()
	dest := t.TempDir()
	st, err := Extract(context.Background(), pr, dest, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Bytes != 100000 {
		t.Errorf("bytes = %d", st.Bytes)
	}
	b, err := os.ReadFile(filepath.Join(dest, "tree/x/zl"))
	if err != nil || len(b) != 100000 {
		t.Errorf("through symlink: %d bytes, %v", len(b), err)
	}
	fi, err := os.Stat(filepath.Join(dest, "tree/x/y"))
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("mode = %v, %v", fi.Mode(), err)
	}
}

func TestExtractHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Extract(ctx, bytes.NewReader(mkTar(t, file("a", "A"))), t.TempDir(), ExtractOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func openRoot(t *testing.T, root string) int {
	t.Helper()
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func closeFd(fd int) { unix.Close(fd) }

package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/boxctl/boxctl/core/boxarchive"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
	"github.com/boxctl/boxctl/test/images/busybox"
	"github.com/boxctl/boxctl/test/testbin"
)

// ownImage builds a busybox layout that only this test uses, so the test
// can take it away (as if the registry were out of reach).
func ownImage(t *testing.T) (ref, dir string) {
	t.Helper()
	dir = filepath.Join(testbin.ShortTempDir(t), "busybox")
	if _, err := busybox.BuildLayout(dir, busybox.Options{}); err != nil {
		t.Fatal(err)
	}
	return "oci-layout:" + dir, dir
}

// diskPath is where the qcow2 plugin keeps a box's writable disk.
func (e *env) diskPath(b *model.Box) string {
	return filepath.Join(e.home, "plugins-data", "qcow2", "disks", b.DiskID+".qcow2")
}

// storage starts a qcow2 plugin process of its own on the env's store
// (the store is shared between processes), for what the runtime has no API
// for here: writing into a disk and taking snapshots.
func (e *env) storage(t *testing.T) sdktest.Clients {
	t.Helper()
	c := sdktest.StartPlugin(t, filepath.Join(e.bin, "boxctl-plugin-qcow2"))
	if err := c.Disks.Configure(context.Background(), &sdk.Config{StateDir: filepath.Join(e.home, "plugins-data", "qcow2"), Home: e.home}); err != nil {
		t.Fatal(err)
	}
	return c
}

func qemuIO(t *testing.T, path string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") || strings.Contains(string(out), "Pattern verification") {
		t.Fatalf("qemu-io %v %s: %v\n%s", cmds, path, err, out)
	}
	return string(out)
}

func qemuReads(path string, off, length int64, pattern byte) bool {
	out, err := exec.Command("qemu-io", "-r", "-f", "qcow2", "-c", "read -P "+itoa(int64(pattern))+" "+itoa(off)+" "+itoa(length), path).CombinedOutput()
	return err == nil && !strings.Contains(string(out), "failed")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// exportable makes a stopped box with data in its disk (0x11 at 1 MiB) and,
// with snapshots, two snapshots (0x22 and 0x33 at 2 MiB).
func exportable(t *testing.T, e *env, name, image string, snapshots bool) *model.Box {
	t.Helper()
	e.ok("create", "--name", name, "-e", "GREETING=hi", "-p", "127.0.0.1:47391:80", "--memory", "256MiB", "--cpus", "2", image, "--", "sleep", "1000")
	e.ok("start", name)
	e.ok("stop", name)
	b := e.info(e.runtime(), name)
	if b.Status != model.StatusStopped || !b.DiskCreated {
		t.Fatalf("box %s: %s, disk made: %v", name, b.Status, b.DiskCreated)
	}
	qemuIO(t, e.diskPath(b), "write -P 0x11 1M 64k")
	if snapshots {
		st := e.storage(t)
		qemuIO(t, e.diskPath(b), "write -P 0x22 2M 64k")
		if _, err := st.Snapshots.CreateSnapshot(context.Background(), b.DiskID, "first"); err != nil {
			t.Fatal(err)
		}
		qemuIO(t, e.diskPath(b), "write -P 0x33 2M 64k")
		if _, err := st.Snapshots.CreateSnapshot(context.Background(), b.DiskID, "second"); err != nil {
			t.Fatal(err)
		}
		qemuIO(t, e.diskPath(b), "write -P 0x44 2M 64k")
	}
	return b
}

// assertNothingLeft fails when the home has boxes other than want, disks
// other than theirs, or temporary files.
func (e *env) assertNothingLeft(t *testing.T, want ...string) {
	t.Helper()
	got := strings.Fields(e.ok("ls", "-a", "--format", "{{.Name}}"))
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("boxes %v, want %v", got, want)
	}
	rt := e.runtime()
	disks := map[string]bool{}
	for _, n := range want {
		disks[e.info(rt, n).DiskID+".qcow2"] = true
	}
	for d := range e.templateDisks(rt) {
		disks[d+".qcow2"] = true
	}
	ents, _ := os.ReadDir(filepath.Join(e.home, "plugins-data", "qcow2", "disks"))
	for _, ent := range ents {
		if !disks[ent.Name()] {
			t.Fatalf("the storage plugin has a disk file no box or template owns: %s", ent.Name())
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(e.home, "tmp")); len(ents) != 0 {
		var names []string
		for _, ent := range ents {
			names = append(names, ent.Name())
		}
		t.Fatalf("temporary files left in the home: %v", names)
	}
	e.assertConsistent(rt)
}

func TestExportImportIntoAFreshHome(t *testing.T) {
	image, layout := ownImage(t)
	src := newEnv(t, "")
	b := exportable(t, src, "web", image, true)
	dir := t.TempDir()
	plain, full := filepath.Join(dir, "web.boxar"), filepath.Join(dir, "web-full.boxar")
	src.ok("export", "web", plain)
	src.ok("export", "--with-snapshots", "--with-image", "web", full)
	src.assertNothingLeft(t, "web")
	// The image is out of reach from now on: the fresh home has only what
	// an archive carries.
	if err := os.RemoveAll(layout); err != nil {
		t.Fatal(err)
	}

	dst := newEnv(t, "")
	_, errs, code := dst.cli("import", plain)
	if code != 125 || !strings.Contains(errs, "is not cached here and cannot be pulled") || !strings.Contains(errs, "--with-image") {
		t.Fatalf("import without the image where it cannot be pulled: exit %d\n%s", code, errs)
	}
	dst.assertNothingLeft(t)

	out, errs, code := dst.cli("import", full)
	if code != 0 {
		t.Fatalf("import: exit %d\n%s", code, errs)
	}
	got := dst.info(dst.runtime(), "web")
	if strings.TrimSpace(out) != got.ID || got.ID == b.ID || !strings.Contains(errs, "imported box web") {
		t.Fatalf("import printed %q / %q; the box is %s (source %s)", out, errs, got.ID, b.ID)
	}
	if got.Status != model.StatusStopped || got.ImageDigest != b.ImageDigest || got.Pending != "" || !reflect.DeepEqual(got.Config, b.Config) {
		t.Fatalf("imported box %+v\nwant the config %+v", got, b.Config)
	}
	if !qemuReads(dst.diskPath(got), 1<<20, 64<<10, 0x11) || !qemuReads(dst.diskPath(got), 2<<20, 64<<10, 0x44) {
		t.Fatal("the imported disk does not hold what the box wrote")
	}
	if info, err := exec.Command("qemu-img", "info", "--output=json", dst.diskPath(got)).Output(); err != nil || strings.Contains(string(info), "backing") {
		t.Fatalf("the imported disk is not standalone: %v\n%s", err, info)
	}
	st := dst.storage(t)
	snaps, err := st.Snapshots.ListSnapshots(context.Background(), got.DiskID)
	if err != nil || len(snaps) != 2 || snaps[0].Name != "first" || snaps[1].Name != "second" {
		t.Fatalf("imported snapshots: %+v, %v", snaps, err)
	}
	if _, err := st.Snapshots.RestoreSnapshot(context.Background(), got.DiskID, "first"); err != nil {
		t.Fatal(err)
	}
	if !qemuReads(dst.diskPath(got), 2<<20, 64<<10, 0x22) {
		t.Fatal("an imported snapshot restores the wrong content")
	}
	// The box runs on the imported image and disk.
	dst.ok("start", "web")
	if out := dst.ok("exec", "web", "--", "sh", "-c", "echo $GREETING"); strings.TrimSpace(out) != "hi" {
		t.Fatalf("exec in the imported box: %q", out)
	}
	dst.ok("stop", "web")
	// The image is in use by the box, as any pulled image would be.
	if _, errs, code := dst.cli("rmi", got.ImageDigest); code == 0 || !strings.Contains(errs, "used by") {
		t.Fatalf("rmi of the imported box's image: exit %d %s", code, errs)
	}
	dst.assertNothingLeft(t, "web")

	// A third home that can pull the reference (the layout is back) needs no
	// image in the archive.
	if _, err := busybox.BuildLayout(layout, busybox.Options{}); err != nil {
		t.Fatal(err)
	}
	third := newEnv(t, "")
	third.ok("import", plain, "--name", "web3")
	if b3 := third.info(third.runtime(), "web3"); b3.ImageDigest != b.ImageDigest || !qemuReads(third.diskPath(b3), 1<<20, 64<<10, 0x11) {
		t.Fatalf("import that pulls the image: %+v", b3)
	}
	third.assertNothingLeft(t, "web3")
}

func TestExportImportThroughAPipe(t *testing.T) {
	e := newEnv(t, "")
	exportable(t, e, "src", testImage, false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	exp := e.boxctlCmd(ctx, "export", "src", "-")
	imp := e.boxctlCmd(ctx, "import", "-", "--name", "piped")
	pipe, err := exp.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	imp.Stdin = pipe
	var impOut, impErr, expErr bytes.Buffer
	imp.Stdout, imp.Stderr, exp.Stderr = &impOut, &impErr, &expErr
	if err := exp.Start(); err != nil {
		t.Fatal(err)
	}
	if err := imp.Run(); err != nil {
		t.Fatalf("import -: %v\n%s", err, impErr.String())
	}
	if err := exp.Wait(); err != nil {
		t.Fatalf("export -: %v\n%s", err, expErr.String())
	}
	b := e.info(e.runtime(), "piped")
	if strings.TrimSpace(impOut.String()) != b.ID || !qemuReads(e.diskPath(b), 1<<20, 64<<10, 0x11) {
		t.Fatalf("piped import: %q, %+v", impOut.String(), b)
	}
	e.assertNothingLeft(t, "piped", "src")
}

func TestExportRefusals(t *testing.T) {
	e := newEnv(t, "")
	e.ok("create", "--name", "fresh", testImage)
	file := filepath.Join(t.TempDir(), "x.boxar")
	_, errs, code := e.cli("export", "fresh", file)
	if code != 125 || !strings.Contains(errs, "has never started") {
		t.Fatalf("export of a box that never ran: exit %d %s", code, errs)
	}
	// A running box is exported from a snapshot taken in the quiesce
	// bracket, which is removed again; the box runs on.
	e.ok("start", "fresh")
	live := filepath.Join(t.TempDir(), "live.boxar")
	e.ok("export", "fresh", live)
	if got := e.snapshotNames("fresh"); len(got) != 0 {
		t.Fatalf("a live export left snapshots %v", got)
	}
	rt := e.runtime()
	if b := e.info(rt, "fresh"); b.Status != model.StatusRunning || b.Pending != "" {
		t.Fatalf("after a live export the box is %s, pending %q", b.Status, b.Pending)
	}
	if n, _ := e.switches(rt, "fresh"); n != 1 {
		t.Fatalf("a live export switched the VM's disk %d times, want 1", n)
	}
	e.ok("import", "--name", "fresh-copy", live)
	e.assertConsistent(rt)
	e.ok("rm", "fresh-copy")
	_, errs, code = e.cli("export", "ghost", file)
	if code != 125 || !strings.Contains(errs, `"ghost"`) {
		t.Fatalf("export of a missing box: exit %d %s", code, errs)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("a refused export left %s: %v", file, err)
	}
	e.ok("stop", "fresh")
	// Binary archives never go to (or come from) a terminal.
	for _, c := range []struct {
		args       []string
		stdoutOnly bool
		want       string
	}{
		{[]string{"export", "fresh", "-"}, true, "refusing to write a box archive to a terminal"},
		{[]string{"import", "-"}, false, "refusing to read a box archive from a terminal"},
	} {
		ptmx, tty, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := e.boxctlCmd(ctx, c.args...)
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = tty, &errb
		if !c.stdoutOnly {
			cmd.Stdin, cmd.Stdout = tty, nil
		}
		err = cmd.Run()
		cancel()
		tty.Close()
		ptmx.Close()
		if err == nil || !strings.Contains(errb.String(), c.want) {
			t.Fatalf("boxctl %v on a terminal: %v\n%s", c.args, err, errb.String())
		}
	}
	e.assertNothingLeft(t, "fresh")
}

func TestImportNameConflict(t *testing.T) {
	e := newEnv(t, "")
	exportable(t, e, "web", testImage, false)
	file := filepath.Join(t.TempDir(), "web.boxar")
	e.ok("export", "web", file)
	_, errs, code := e.cli("import", file)
	if code != 125 || !strings.Contains(errs, `the name "web" is already in use`) || !strings.Contains(errs, "--name") {
		t.Fatalf("import onto a taken name: exit %d %s", code, errs)
	}
	e.assertNothingLeft(t, "web")
	e.ok("import", file, "--name", "web2")
	_, errs, code = e.cli("import", file, "--name", "web2")
	if code != 125 || !strings.Contains(errs, `"web2" is already in use`) {
		t.Fatalf("import onto a taken --name: exit %d %s", code, errs)
	}
	_, errs, code = e.cli("import", file, "--name", "bad name")
	if code != 125 || !strings.Contains(errs, "invalid name") {
		t.Fatalf("import with an invalid --name: exit %d %s", code, errs)
	}
	e.assertNothingLeft(t, "web2", "web")
}

// archiveParts splits a box archive into its manifest and raw members.
func archiveParts(t *testing.T, file string) (map[string]any, []tarEntry) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var entries []tarEntry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		entries = append(entries, tarEntry{*h, data})
	}
	var m map[string]any
	if err := json.Unmarshal(entries[0].data, &m); err != nil {
		t.Fatal(err)
	}
	return m, entries[1:]
}

type tarEntry struct {
	hdr  tar.Header
	data []byte
}

func writeArchive(t *testing.T, dir, name string, manifest any, entries []tarEntry) string {
	t.Helper()
	body, _ := json.Marshal(manifest)
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	all := append([]tarEntry{{tar.Header{Typeflag: tar.TypeReg, Name: boxarchive.ManifestName, Mode: 0o644}, body}}, entries...)
	for _, e := range all {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.data)
	}
	tw.Close()
	return p
}

// diskArchive writes a valid archive whose disk is the qcow2 file disk.
func diskArchive(t *testing.T, dir, name, disk string, virtualSize uint64, box boxarchive.Box) string {
	t.Helper()
	w := boxarchive.NewWriter(dir)
	defer w.Close()
	if err := w.AddDisk(context.Background(), disk, virtualSize); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := w.WriteTo(context.Background(), f, box, time.Now()); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHostileArchivesThroughTheCLI: archives an attacker would hand out.
// Each is refused with its own clear error, and the home is left as it
// was: no box, no disk, no temporary file.
func TestHostileArchivesThroughTheCLI(t *testing.T) {
	e := newEnv(t, "")
	b := exportable(t, e, "victim", testImage, false)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.boxar")
	e.ok("export", "victim", good)
	raw, _ := os.ReadFile(good)
	m, entries := archiveParts(t, good)
	edit := func(name string, fn func(m map[string]any, es []tarEntry) []tarEntry) string {
		mb, _ := json.Marshal(m)
		var mc map[string]any
		json.Unmarshal(mb, &mc)
		es := append([]tarEntry(nil), entries...)
		es = fn(mc, es)
		return writeArchive(t, dir, name, mc, es)
	}
	member := func(m map[string]any, i int) map[string]any {
		return m["members"].([]any)[i].(map[string]any)
	}
	truncated := filepath.Join(dir, "truncated.boxar")
	os.WriteFile(truncated, raw[:len(raw)/2], 0o644)

	box := boxarchive.Box{Name: "evil", Image: boxarchive.Image{Reference: testImage, Digest: b.ImageDigest}, MemoryMiB: 256, DiskSize: 1 << 30}
	backing := filepath.Join(dir, "backing.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", backing, "64M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	huge := filepath.Join(dir, "huge.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", huge, "1P").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}

	cases := []struct {
		name, file, want string
	}{
		{"truncated archive", truncated, "archive truncated"},
		{"bad checksum", edit("checksum.boxar", func(m map[string]any, es []tarEntry) []tarEntry {
			member(m, 0)["sha256"] = strings.Repeat("ab", 32)
			return es
		}), `member "disk.qcow2.zst": sha256: checksum mismatch`},
		{"dot-dot member name", edit("dotdot.boxar", func(m map[string]any, es []tarEntry) []tarEntry {
			es[0].hdr.Name = "../x"
			return es
		}), `member "../x": unsafe member name`},
		{"absolute member name", edit("abs.boxar", func(m map[string]any, es []tarEntry) []tarEntry {
			es[0].hdr.Name = "/etc/x"
			return es
		}), `member "/etc/x": unsafe member name: absolute`},
		{"symlink member", edit("symlink.boxar", func(m map[string]any, es []tarEntry) []tarEntry {
			es[0] = tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "disk.qcow2.zst", Linkname: "/etc/shadow"}}
			return es
		}), `symbolic link to "/etc/shadow"`},
		{"hardlink member", edit("hardlink.boxar", func(m map[string]any, es []tarEntry) []tarEntry {
			es[0] = tarEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "disk.qcow2.zst", Linkname: "/etc/shadow"}}
			return es
		}), `hard link to "/etc/shadow"`},
		{"undeclared extra member", edit("extra.boxar", func(m map[string]any, es []tarEntry) []tarEntry {
			return append(es, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "payload.sh", Mode: 0o755}, data: []byte("#!/bin/sh\n")})
		}), `member "payload.sh": undeclared member`},
		{"unknown version", edit("version.boxar", func(m map[string]any, es []tarEntry) []tarEntry {
			m["version"] = 99
			return es
		}), "version 99; this boxctl reads version 1 only"},
		{"absurd declared size", edit("size.boxar", func(m map[string]any, es []tarEntry) []tarEntry {
			member(m, 0)["size"] = 1 << 50
			return es
		}), "members[0].size: over the size limit"},
		{"garbage instead of zstd", edit("garbage.boxar", func(m map[string]any, es []tarEntry) []tarEntry {
			es[0].data = bytes.Repeat([]byte("garbage!"), len(es[0].data)/8)
			member(m, 0)["compressed_size"] = len(es[0].data)
			return es
		}), "not valid zstd data"},
		{"qcow2 with a backing file", diskArchive(t, dir, "backing.boxar", backing, 64<<20, box), `backing file "/etc/shadow"`},
		{"qcow2 with an absurd virtual size", diskArchive(t, dir, "huge.boxar", huge, 1<<50, box), "virtual size"},
		{"not an archive at all", good + ".missing", "no such file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, errs, code := e.cli("import", c.file, "--name", "intruder")
			if code != 125 || !strings.Contains(errs, c.want) {
				t.Fatalf("import: exit %d\n%s\nwant 125 and %q", code, errs, c.want)
			}
			t.Log(strings.TrimSpace(errs))
			e.assertNothingLeft(t, "victim")
		})
	}
	t.Run("over --max-disk-size", func(t *testing.T) {
		_, errs, code := e.cli("import", good, "--name", "intruder", "--max-disk-size", "64KiB")
		if code != 125 || !strings.Contains(errs, "over the size limit") || !strings.Contains(errs, "the limit is 65536") {
			t.Fatalf("import over the limit: exit %d\n%s", code, errs)
		}
		e.assertNothingLeft(t, "victim")
	})
}

// TestKilledExportAndImportLeaveNothing: boxctl killed with SIGKILL in the
// middle of an export, or of an import — while it extracts the archive,
// and after it recorded the box while the storage plugin adopts the disk —
// leaves nothing the next command does not clean up.
func TestKilledExportAndImportLeaveNothing(t *testing.T) {
	e := newEnv(t, "")
	b := exportable(t, e, "big", testImage, false)
	// Enough data that adopting the disk takes a while.
	qemuIO(t, e.diskPath(b), "write -P 0x5a 8M 400M")
	file := filepath.Join(t.TempDir(), "big.boxar")
	e.ok("export", "big", file)
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("export", func(t *testing.T) {
		out := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := e.boxctlCmd(ctx, "export", "big", filepath.Join(out, "cut.boxar"))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Killed once the compressed disk is being written.
		waitFor(t, "the export's compressed disk", func() bool {
			m, _ := filepath.Glob(filepath.Join(e.home, "tmp", "export-*", ".member-*"))
			return len(m) > 0
		})
		kill9(t, cmd.Process.Pid)
		_ = cmd.Wait()
		if ents, _ := os.ReadDir(out); len(ents) != 0 {
			t.Fatalf("a killed export left %v next to its file", ents)
		}
		e.assertNothingLeft(t, "big")
	})

	t.Run("while extracting", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := e.boxctlCmd(ctx, "import", "-", "--name", "cut")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Half the archive, then boxctl stays blocked reading the rest.
		if _, err := stdin.Write(raw[:len(raw)/2]); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the import's temporary files", func() bool {
			ents, _ := os.ReadDir(filepath.Join(e.home, "tmp"))
			return len(ents) == 2
		})
		kill9(t, cmd.Process.Pid)
		_ = cmd.Wait()
		stdin.Close()
		e.assertNothingLeft(t, "big")
	})

	t.Run("while adopting the disk", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := e.boxctlCmd(ctx, "import", file, "--name", "half")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		st, err := state.Open(ctx, e.home)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the pending import's record", func() bool {
			pending := false
			_ = st.View(ctx, func(tx *state.Tx) error {
				boxes, _ := tx.Boxes()
				for _, x := range boxes {
					pending = pending || (x.Name == "half" && x.Pending == "importing")
				}
				return nil
			})
			return pending
		})
		kill9(t, cmd.Process.Pid)
		_ = cmd.Wait()
		// The next command rolls it back.
		e.assertNothingLeft(t, "big")
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

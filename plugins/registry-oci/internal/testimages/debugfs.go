package testimages

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// Ext4 inspects an ext4 image with e2fsprogs' debugfs, an implementation
// independent of the writer under test.
type Ext4 struct {
	t    testing.TB
	path string
}

// OpenExt4 returns an inspector for the image at path. It fails the test if
// debugfs or e2fsck are missing (install e2fsprogs).
func OpenExt4(t testing.TB, path string) *Ext4 {
	t.Helper()
	for _, tool := range []string{"debugfs", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found in PATH: install e2fsprogs (apt-get install e2fsprogs) to run these tests", tool)
		}
	}
	return &Ext4{t: t, path: path}
}

func (x *Ext4) debugfs(cmd string) (string, error) {
	c := exec.Command("debugfs", "-R", cmd, x.path)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	// debugfs reports lookup failures on stderr with exit status 0.
	es := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(errb.String()), "debugfs 1."))
	if i := strings.Index(es, "\n"); i >= 0 {
		es = strings.TrimSpace(es[i+1:])
	} else {
		es = ""
	}
	if err != nil {
		return out.String(), fmt.Errorf("debugfs %q: %v: %s", cmd, err, errb.String())
	}
	if es != "" {
		return out.String(), fmt.Errorf("debugfs %q: %s", cmd, es)
	}
	return out.String(), nil
}

// Fsck runs e2fsck -fn and fails the test unless the file system is clean.
func (x *Ext4) Fsck() {
	x.t.Helper()
	out, err := exec.Command("e2fsck", "-fn", x.path).CombinedOutput()
	if err != nil {
		x.t.Fatalf("e2fsck -fn %s: %v\n%s", x.path, err, out)
	}
}

// Stat is what debugfs says about an inode.
type Stat struct {
	Inode      int
	Type       string // regular, directory, symlink, character special, block special, FIFO
	Mode       uint32 // permission bits incl. setuid/setgid/sticky
	Uid, Gid   int
	Size       int64
	Links      int
	Mtime      int64
	FileACL    int64 // external xattr block, 0 if none
	Major      int
	Minor      int
	LinkTarget string // fast symlinks
	Xattrs     map[string]string
}

var (
	reInode  = regexp.MustCompile(`Inode: (\d+)\s+Type: (.+?)\s+Mode:\s+(\d+)`)
	reUser   = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+).*Size: (\d+)`)
	reLinks  = regexp.MustCompile(`Links: (\d+)`)
	reMtime  = regexp.MustCompile(`mtime: 0x([0-9a-f]+)`)
	reACL    = regexp.MustCompile(`File ACL: (\d+)`)
	reDev    = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
	reFast   = regexp.MustCompile(`Fast link dest: "(.*)"`)
	reXattr  = regexp.MustCompile(`^\s+(\S+) \((\d+)\)(?: = (.*))?$`)
	reLsLine = regexp.MustCompile(`^/(\d+)/(\d+)/(\d+)/(\d+)/(.*)/(\d*)/$`)
)

// Stat stats path; ok is false if it does not exist.
func (x *Ext4) Stat(path string) (Stat, bool) {
	x.t.Helper()
	out, err := x.debugfs("stat " + quote(path))
	if err != nil {
		if strings.Contains(err.Error(), "File not found") || strings.Contains(err.Error(), "is not a directory") {
			return Stat{}, false
		}
		x.t.Fatalf("%v", err)
	}
	var s Stat
	m := reInode.FindStringSubmatch(out)
	if m == nil {
		x.t.Fatalf("cannot parse debugfs stat %s:\n%s", path, out)
	}
	s.Inode, _ = strconv.Atoi(m[1])
	s.Type = strings.TrimSpace(m[2])
	mode, _ := strconv.ParseUint(m[3], 8, 32)
	s.Mode = uint32(mode)
	if m := reUser.FindStringSubmatch(out); m != nil {
		s.Uid, _ = strconv.Atoi(m[1])
		s.Gid, _ = strconv.Atoi(m[2])
		s.Size, _ = strconv.ParseInt(m[3], 10, 64)
	}
	if m := reLinks.FindStringSubmatch(out); m != nil {
		s.Links, _ = strconv.Atoi(m[1])
	}
	if m := reMtime.FindStringSubmatch(out); m != nil {
		s.Mtime, _ = strconv.ParseInt(m[1], 16, 64)
	}
	if m := reACL.FindStringSubmatch(out); m != nil {
		s.FileACL, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reDev.FindStringSubmatch(out); m != nil {
		s.Major, _ = strconv.Atoi(m[1])
		s.Minor, _ = strconv.Atoi(m[2])
	}
	if m := reFast.FindStringSubmatch(out); m != nil {
		s.LinkTarget = m[1]
	}
	s.Xattrs = map[string]string{}
	inX := false
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "Extended attributes:") {
			inX = true
			continue
		}
		if inX {
			m := reXattr.FindStringSubmatch(line)
			if m == nil {
				inX = false
				continue
			}
			v := m[3]
			if uq, err := strconv.Unquote(v); err == nil {
				v = uq
			}
			if m[3] == "" && m[2] != "0" {
				// debugfs only prints short values inline.
				v = x.xattr(path, m[1])
			}
			s.Xattrs[m[1]] = v
		}
	}
	return s, true
}

// xattr reads one extended attribute's raw value.
func (x *Ext4) xattr(path, name string) string {
	x.t.Helper()
	out := filepath.Join(x.t.TempDir(), "xattr")
	if _, err := x.debugfs(fmt.Sprintf("ea_get -f %s %s %s", out, quote(path), name)); err != nil {
		x.t.Fatalf("%v", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		x.t.Fatalf("ea_get %s %s: %v", path, name, err)
	}
	return string(b)
}

// MustStat stats path and fails the test if it is missing.
func (x *Ext4) MustStat(path string) Stat {
	x.t.Helper()
	s, ok := x.Stat(path)
	if !ok {
		x.t.Fatalf("%s: %s does not exist", x.path, path)
	}
	return s
}

// Cat returns a file's content.
func (x *Ext4) Cat(path string) string {
	x.t.Helper()
	out, err := x.debugfs("cat " + quote(path))
	if err != nil {
		x.t.Fatalf("%v", err)
	}
	return out
}

// CatTo streams a file's content to w, for files too large to hold in
// memory.
func (x *Ext4) CatTo(path string, w io.Writer) {
	x.t.Helper()
	c := exec.Command("debugfs", "-R", "cat "+quote(path), x.path)
	var errb bytes.Buffer
	c.Stdout, c.Stderr = w, &errb
	if err := c.Run(); err != nil {
		x.t.Fatalf("debugfs cat %s: %v: %s", path, err, errb.String())
	}
	if strings.Contains(errb.String(), "File not found") {
		x.t.Fatalf("debugfs cat %s: %s", path, errb.String())
	}
}

// Allocated is how much space a file takes on its file system (its
// blocks, not its size): a sparse file's holes take none.
func Allocated(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// DirEntry is one line of `ls -p`.
type DirEntry struct {
	Inode int
	Mode  uint32 // full st_mode (type and permissions)
	Name  string
}

// Ls lists a directory (without . and ..).
func (x *Ext4) Ls(dir string) []DirEntry {
	x.t.Helper()
	out, err := x.debugfs("ls -p " + quote(dir))
	if err != nil {
		x.t.Fatalf("%v", err)
	}
	var ents []DirEntry
	for _, line := range strings.Split(out, "\n") {
		m := reLsLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil || m[1] == "0" || m[5] == "." || m[5] == ".." {
			continue
		}
		ino, _ := strconv.Atoi(m[1])
		mode, _ := strconv.ParseUint(m[2], 8, 32)
		ents = append(ents, DirEntry{Inode: ino, Mode: uint32(mode), Name: m[5]})
	}
	return ents
}

// Names lists the names in a directory.
func (x *Ext4) Names(dir string) []string {
	x.t.Helper()
	var out []string
	for _, e := range x.Ls(dir) {
		out = append(out, e.Name)
	}
	return out
}

func quote(p string) string { return `"` + p + `"` }

package store

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// Directories under the state directory.
const (
	dirDisks = "disks"
	dirBases = "bases"
	dirBlank = "blank"
	dirLocks = "locks"
)

// blankPrefix starts the ID (and file name) of every blank base.
const blankPrefix = "ext4-"

var (
	diskIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,127}$`)
	baseIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

// diskFile is the overlay of disk id, relative to the state directory.
func diskFile(id string) string { return filepath.Join(dirDisks, id+".qcow2") }

// baseFileByID is the file of base id, relative to the state directory.
func baseFileByID(id string) string {
	if strings.HasPrefix(id, blankPrefix) {
		return filepath.Join(dirBlank, id+".raw")
	}
	return filepath.Join(dirBases, id+".qcow2")
}

func baseFile(b *baseRecord) string { return baseFileByID(b.ID) }

// backingName is how an overlay in disks/ or bases/ names base id.
func backingName(id string) string { return "../" + baseFileByID(id) }

// backingFormat is the format of base id's file.
func backingFormat(id string) string {
	if strings.HasPrefix(id, blankPrefix) {
		return "raw"
	}
	return "qcow2"
}

func blankID(size uint64) string { return blankPrefix + strconv.FormatUint(size, 10) }

// tempDiskFile is a temporary overlay for disk id made by operation op.
func tempDiskFile(id, op string) string { return filepath.Join(dirDisks, "."+id+"."+op+".tmp") }

func tempBlankFile(id, op string) string { return filepath.Join(dirBlank, "."+id+"."+op+".tmp") }

// newID returns 32 random hex digits (operation and base IDs).
func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	return hex.EncodeToString(b[:])
}

// syncDir makes a directory's entries (creations, renames, removals)
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// syncFile makes a file's data and inode (permissions) durable.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

// renameDurable renames from to to (replacing to) and syncs both
// directories.
func renameDurable(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	if err := syncDir(filepath.Dir(to)); err != nil {
		return err
	}
	if filepath.Dir(from) != filepath.Dir(to) {
		return syncDir(filepath.Dir(from))
	}
	return nil
}

// chmodDurable changes a file's mode and syncs it.
func chmodDurable(path string, mode os.FileMode) error {
	if err := os.Chmod(path, mode); err != nil {
		return err
	}
	return syncFile(path)
}

// removeIfExists removes path; a missing file is not an error.
func removeIfExists(path string) error {
	err := os.Remove(path)
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// inode returns the inode number of path, 0 if it does not exist.
func inode(path string) (uint64, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("stat %s: no inode number", path)
	}
	return st.Ino, nil
}

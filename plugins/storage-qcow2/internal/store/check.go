package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/boxctl/boxctl/plugins/storage-qcow2/qcow2"
)

// Check verifies that the store in stateDir is consistent and returns every
// problem found (none: nil). It checks that no operation is unfinished,
// every file a record references exists with the backing reference and
// mode the metadata implies, every file in the store's directories is
// referenced, and every base's reference count equals the references it
// actually has. It does not check the qcow2 structures themselves (run
// `qemu-img check` for that) and is meant for a quiescent store: run it
// while no plugin process works on stateDir.
func Check(ctx context.Context, stateDir string) ([]string, error) {
	cfg := &settings{dir: stateDir}
	db := newMetaDB(stateDir, 30*time.Second)
	var (
		disks   []*diskRecord
		bases   []*baseRecord
		intents []*intent
	)
	err := db.view(ctx, func(t *tx) error {
		var err error
		if disks, err = t.disks(); err != nil {
			return err
		}
		if bases, err = t.bases(); err != nil {
			return err
		}
		intents, err = t.intents()
		return err
	})
	if errors.Is(err, errNoDatabase) {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	var problems []string
	addf := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	for _, in := range intents {
		addf("unfinished operation %s %s on disks %v (committed=%v)", in.Op, in.ID, in.Disks, in.Committed)
	}
	byID := map[string]*baseRecord{}
	for _, b := range bases {
		byID[b.ID] = b
	}
	refs := map[string]int64{}
	known := map[string]bool{}
	for _, d := range disks {
		known[diskFile(d.ID)] = true
		if d.Base != "" {
			refs[d.Base]++
			if byID[d.Base] == nil {
				addf("disk %s: base %s has no record", d.ID, d.Base)
			}
		}
		checkBacking(cfg, diskFile(d.ID), d.Base, addf)
		names := map[string]bool{}
		for _, sn := range d.Snapshots {
			if names[sn.Name] {
				addf("disk %s: snapshot name %q is used twice", d.ID, sn.Name)
			}
			names[sn.Name] = true
			refs[sn.Base]++
			if byID[sn.Base] == nil {
				addf("disk %s: snapshot %q: base %s has no record", d.ID, sn.Name, sn.Base)
			}
		}
	}
	for _, b := range bases {
		if b.Parent != "" {
			refs[b.Parent]++
			if byID[b.Parent] == nil {
				addf("base %s: parent %s has no record", b.ID, b.Parent)
			}
		}
	}
	for _, b := range bases {
		f := baseFile(b)
		known[f] = true
		if b.Refs != refs[b.ID] {
			addf("base %s: reference count %d, but %d references exist", b.ID, b.Refs, refs[b.ID])
		}
		switch b.Kind {
		case kindFrozen:
			if refs[b.ID] == 0 {
				addf("base %s: nothing references it but it was not deleted", b.ID)
			}
			checkBacking(cfg, f, b.Parent, addf)
		case kindBlank:
			if b.Parent != "" {
				addf("blank base %s has a parent", b.ID)
			}
			size, ok := blankSizeOf(filepath.Base(f))
			if fi, err := os.Stat(cfg.path(f)); err == nil && (!ok || uint64(fi.Size()) != size) {
				addf("blank base %s: file size %d does not match its name", b.ID, fi.Size())
			}
		default:
			addf("base %s: unknown kind %q", b.ID, b.Kind)
		}
		fi, err := os.Stat(cfg.path(f))
		switch {
		case err != nil:
			addf("base %s: %v", b.ID, err)
		case fi.Mode().Perm()&0o222 != 0:
			addf("base %s: %s is writable (mode %v); bases must be read-only", b.ID, f, fi.Mode().Perm())
		}
	}
	for _, dir := range []string{dirDisks, dirBases, dirBlank} {
		ents, err := os.ReadDir(cfg.path(dir))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if f := filepath.Join(dir, e.Name()); !known[f] {
				addf("unreferenced file %s", f)
			}
		}
	}
	sort.Strings(problems)
	return problems, nil
}

// checkBacking checks that the qcow2 file rel exists and names base as its
// backing file (none when base is "").
func checkBacking(cfg *settings, rel, base string, addf func(string, ...any)) {
	img, err := qcow2.Open(cfg.path(rel), qcow2.OpenOptions{NoBacking: true, L2CacheBytes: 1 << 20})
	if err != nil {
		addf("%s: %v", rel, err)
		return
	}
	defer img.Close()
	name, format := img.Backing()
	want, wantFormat := "", ""
	if base != "" {
		want, wantFormat = backingName(base), backingFormat(base)
	}
	if name != want || (want != "" && format != wantFormat) {
		addf("%s: backing file %q (%s), want %q (%s)", rel, name, format, want, wantFormat)
	}
	if strings.HasPrefix(rel, dirDisks) {
		if fi, err := os.Stat(cfg.path(rel)); err == nil && fi.Mode().Perm()&0o200 == 0 {
			addf("%s: overlay is not writable (mode %v)", rel, fi.Mode().Perm())
		}
	}
}

package core

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/model"
)

// TestVerifyStateRefusesWhatWasNotSaved: a state file that is missing,
// truncated, corrupt or saved by another VMM is refused before any VMM
// reads it.
func TestVerifyStateRefusesWhatWasNotSaved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.vmstate")
	data := []byte(strings.Repeat("QEVM state ", 1000))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sum, size, err := checksumFile(path)
	if err != nil || size != int64(len(data)) {
		t.Fatalf("checksum: %v, size %d", err, size)
	}
	r := &Runtime{cfg: &config.Config{VMM: "qemu"}}
	st := model.VMState{File: path, Size: size, CRC32C: sum, VMM: "qemu"}
	if err := r.verifyState(st, "qemu"); err != nil {
		t.Fatalf("the file as saved: %v", err)
	}
	other := st
	other.VMM = "libkrun"
	if err := r.verifyState(other, "qemu"); !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), "libkrun") {
		t.Fatalf("another VMM's state: %v", err)
	}
	data[500] ^= 0xff
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.verifyState(st, "qemu"); !errors.Is(err, errDamagedState) || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("a corrupt file: %v", err)
	}
	if err := os.Truncate(path, 100); err != nil {
		t.Fatal(err)
	}
	if err := r.verifyState(st, "qemu"); !errors.Is(err, errDamagedState) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("a truncated file: %v", err)
	}
	os.Remove(path)
	if err := r.verifyState(st, "qemu"); !errors.Is(err, errDamagedState) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("a missing file: %v", err)
	}
}

func TestInputsDifferNamesTheFirstDifference(t *testing.T) {
	saved := map[string]string{"kernel": "a", "memory_mib": "512", "qemu": "7.2"}
	for _, c := range []struct {
		now  map[string]string
		want string
	}{
		{map[string]string{"kernel": "a", "memory_mib": "512", "qemu": "7.2"}, ""},
		{map[string]string{"kernel": "b", "memory_mib": "512", "qemu": "7.2"}, `kernel (was "a", now "b")`},
		{map[string]string{"kernel": "a", "memory_mib": "512"}, `qemu (was "7.2"; the VMM no longer reports it)`},
		{map[string]string{"kernel": "a", "memory_mib": "512", "qemu": "7.2", "cpu": "max"}, `cpu (not recorded when it was saved; now "max")`},
	} {
		if got := inputsDiffer(saved, c.now); got != c.want {
			t.Errorf("inputsDiffer(%v) = %q, want %q", c.now, got, c.want)
		}
	}
}

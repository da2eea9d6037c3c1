package config

import (
	"fmt"
	"strconv"
	"strings"
)

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"PiB", 1 << 50}, {"EiB", 1 << 60},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"PB", 1e15}, {"EB", 1e18},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"P", 1 << 50}, {"E", 1 << 60},
	{"B", 1},
}

// maxSize bounds what ParseSize accepts, far above any real size, so that
// sizes and sums of a few of them never overflow a uint64.
const maxSize = 1 << 62

// Limits on box sizes, shared by the config file and the CLI flags.
const (
	// MinMemory is the least memory a box boots with: the kernel and the
	// guest agent need about 40MiB.
	MinMemory = 64 << 20
	// MinDiskSize is the smallest writable disk: mkfs.ext4 and the guest's
	// first writes need room.
	MinDiskSize = 64 << 20
	// MaxDiskSize caps the writable disk. The disk is sparse, so a huge size
	// costs nothing until mkfs.ext4 runs, and then it does: its metadata
	// grows with the size (a 1PiB disk means gigabytes of group descriptors
	// and bitmaps written before the first boot). 16TiB is also the qcow2
	// plugin's default max_virtual_size, so a size accepted here is one the
	// shipped storage plugin creates; a larger size is most likely a typo.
	MaxDiskSize = 16 << 40
)

// CheckMemory checks a box memory size in bytes. Memory is given to the VM
// in whole MiB; a size that is not one is rounded down.
func CheckMemory(n uint64) error {
	if n < MinMemory {
		return fmt.Errorf("memory must be at least %s (got %s)", FormatSize(MinMemory), FormatSize(n))
	}
	return nil
}

// CheckDiskSize checks a writable-disk size in bytes.
func CheckDiskSize(n uint64) error {
	if n < MinDiskSize {
		return fmt.Errorf("the writable disk must be at least %s (got %s)", FormatSize(MinDiskSize), FormatSize(n))
	}
	if n > MaxDiskSize {
		return fmt.Errorf("%s is too large: the writable disk can be at most %s", FormatSize(n), FormatSize(MaxDiskSize))
	}
	return nil
}

// ParseSize parses a byte size such as "512MiB", "10G", "4096" (bytes).
// Binary units (KiB, MiB, ... EiB) and the short forms K, M, G, T, P, E are
// powers of 1024; KB, MB, GB, TB, PB, EB are powers of 1000. Sizes above
// 4EiB are refused as too large.
func ParseSize(s string) (uint64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("empty size: use a number with a unit, like 512MiB or 10GiB")
	}
	mult := uint64(1)
	num := in
	for _, u := range sizeUnits {
		if strings.HasSuffix(in, u.suffix) {
			mult = u.mult
			num = strings.TrimSpace(strings.TrimSuffix(in, u.suffix))
			break
		}
	}
	if strings.ContainsAny(num, "eE") {
		return 0, fmt.Errorf("invalid size %q: use a number with a unit, like 512MiB or 10GiB", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("invalid size %q: use a number with a unit, like 512MiB or 10GiB", s)
	}
	total := v * float64(mult)
	if total > maxSize {
		return 0, fmt.Errorf("size %q is too large: sizes go up to %s", s, FormatSize(maxSize))
	}
	return uint64(total), nil
}

// FormatSize formats n bytes with the largest binary unit that keeps it
// exact when possible ("512MiB", "10GiB"), else with one decimal.
func FormatSize(n uint64) string {
	units := []struct {
		name string
		mult uint64
	}{{"EiB", 1 << 60}, {"PiB", 1 << 50}, {"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if n >= u.mult && n%u.mult == 0 {
			return fmt.Sprintf("%d%s", n/u.mult, u.name)
		}
	}
	for _, u := range units {
		if n >= u.mult {
			return fmt.Sprintf("%.1f%s", float64(n)/float64(u.mult), u.name)
		}
	}
	return fmt.Sprintf("%dB", n)
}

// HumanSize formats n bytes for people: the largest binary unit that keeps
// the number at least 1, with one decimal ("41.8MiB", "512B").
func HumanSize(n uint64) string {
	units := []struct {
		name string
		mult uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if n >= u.mult {
			v := float64(n) / float64(u.mult)
			if n%u.mult == 0 {
				return fmt.Sprintf("%d%s", n/u.mult, u.name)
			}
			return fmt.Sprintf("%.1f%s", v, u.name)
		}
	}
	return fmt.Sprintf("%dB", n)
}

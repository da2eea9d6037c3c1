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
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"TB", 1000 * 1000 * 1000 * 1000},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// ParseSize parses a byte size such as "512MiB", "10G", "4096" (bytes).
// Binary units (KiB, MiB, ...) and the short forms K, M, G, T are powers of
// 1024; KB, MB, GB, TB are powers of 1000.
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
	if total > float64(1<<62) {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return uint64(total), nil
}

// FormatSize formats n bytes with the largest binary unit that keeps it
// exact when possible ("512MiB", "10GiB"), else with one decimal.
func FormatSize(n uint64) string {
	units := []struct {
		name string
		mult uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
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

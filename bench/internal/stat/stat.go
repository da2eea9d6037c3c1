// Package stat summarizes timing samples for the benchmark programs.
package stat

import (
	"slices"
	"time"
)

// Median returns the median of d (the upper one for an even count).
func Median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// Min returns the smallest of d.
func Min(d []time.Duration) time.Duration { return slices.Min(d) }

// Max returns the largest of d.
func Max(d []time.Duration) time.Duration { return slices.Max(d) }

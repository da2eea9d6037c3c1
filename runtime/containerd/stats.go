package containerd

import (
	"github.com/containerd/cgroups/v3/cgroup2/stats"

	"github.com/boxctl/boxctl/core"
)

// cgroupMetrics expresses a box's stats as cgroup v2 metrics, the type
// containerd's clients (ctr, CRI) decode: memory in use and the VM's
// memory as its limit, CPU time and process count from the guest.
func cgroupMetrics(st *core.Stats) *stats.Metrics {
	m := &stats.Metrics{}
	if g := st.Guest; g != nil {
		used := g.MemoryTotalBytes - g.MemoryAvailableBytes
		m.Memory = &stats.MemoryStat{Usage: used, UsageLimit: g.MemoryTotalBytes}
		user := uint64((g.CPU.User + g.CPU.Nice).Microseconds())
		sys := uint64((g.CPU.System + g.CPU.IRQ + g.CPU.SoftIRQ).Microseconds())
		m.CPU = &stats.CPUStat{UsageUsec: user + sys, UserUsec: user, SystemUsec: sys}
		m.Pids = &stats.PidsStat{Current: uint64(g.Processes)}
	}
	return m
}

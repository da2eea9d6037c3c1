package usernet

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"time"
)

// StatsFileName is the file, in a VM's run directory, that a VMM's launcher
// keeps the network's Stats in (ReportStats) and that its Metrics reads
// back (ReadStatsFile): the launcher is another process than the plugin.
const StatsFileName = "net-stats.json"

// ReportStats writes n's Stats to path (JSON, replaced atomically) now,
// every interval while they change, and once more when ctx ends. Write
// errors are logged at debug level: the VM runs on without them.
func (n *Network) ReportStats(ctx context.Context, path string, every time.Duration) {
	var (
		last    Stats
		written bool
	)
	write := func() {
		st := n.Stats()
		if written && reflect.DeepEqual(st, last) {
			return
		}
		if err := writeStatsFile(path, st); err != nil {
			n.log.Debug("usernet: write the stats file", "file", path, "err", err)
			return
		}
		last, written = st, true
	}
	write()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			write()
			return
		case <-t.C:
			write()
		}
	}
}

func writeStatsFile(path string, st Stats) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".net-stats-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// ReadStatsFile reads what ReportStats wrote.
func ReadStatsFile(path string) (Stats, error) {
	var st Stats
	b, err := os.ReadFile(path)
	if err != nil {
		return st, fmt.Errorf("read network stats: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("read network stats %s: %w", path, err)
	}
	return st, nil
}

// Metrics names the counters for a VMM's Metrics.Extra.
func (s Stats) Metrics() map[string]float64 {
	return map[string]float64{
		"net_tcp_conns":   float64(s.TCPConns),
		"net_udp_flows":   float64(s.UDPFlows),
		"net_dns_queries": float64(s.DNSQueries),
		"net_dns_refused": float64(s.DNSRefused),
		"net_denied_tcp":  float64(s.DeniedTCP),
		"net_denied_udp":  float64(s.DeniedUDP),
		"net_rx_bytes":    float64(s.RxBytes),
		"net_tx_bytes":    float64(s.TxBytes),
	}
}

package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/boxctl/boxctl/guest/proto/agentv1"
)

// userHZ is the unit of /proc/stat CPU times (USER_HZ is 100 on every Linux architecture
// boxctl runs on).
const userHZ = 100

func readUptime() (time.Duration, error) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("parse /proc/uptime: %q", b)
	}
	secs, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc/uptime: %w", err)
	}
	return time.Duration(secs * float64(time.Second)), nil
}

func readBootTime() (time.Time, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("parse btime: %w", err)
			}
			return time.Unix(secs, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("no btime in /proc/stat")
}

func readStats() (*agentv1.StatsResponse, error) {
	resp := &agentv1.StatsResponse{}

	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(stat))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "cpu":
			ticks := make([]time.Duration, 8)
			for i := 0; i < 8 && i+1 < len(f); i++ {
				v, err := strconv.ParseUint(f[i+1], 10, 64)
				if err != nil {
					return nil, fmt.Errorf("parse /proc/stat cpu line: %w", err)
				}
				ticks[i] = time.Duration(v) * time.Second / userHZ
			}
			resp.Cpu = &agentv1.CPUTimes{
				User: durationpb.New(ticks[0]), Nice: durationpb.New(ticks[1]),
				System: durationpb.New(ticks[2]), Idle: durationpb.New(ticks[3]),
				Iowait: durationpb.New(ticks[4]), Irq: durationpb.New(ticks[5]),
				Softirq: durationpb.New(ticks[6]), Steal: durationpb.New(ticks[7]),
			}
		case strings.HasPrefix(f[0], "cpu"):
			resp.NumCpus++
		}
	}

	mem, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	sc = bufio.NewScanner(bytes.NewReader(mem))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 2 && f[2] == "kB" {
			v *= 1024
		}
		switch f[0] {
		case "MemTotal:":
			resp.MemoryTotalBytes = v
		case "MemFree:":
			resp.MemoryFreeBytes = v
		case "MemAvailable:":
			resp.MemoryAvailableBytes = v
		}
	}

	load, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return nil, err
	}
	lf := strings.Fields(string(load))
	if len(lf) < 3 {
		return nil, fmt.Errorf("parse /proc/loadavg: %q", load)
	}
	for i, dst := range []*float64{&resp.Load1, &resp.Load5, &resp.Load15} {
		if *dst, err = strconv.ParseFloat(lf[i], 64); err != nil {
			return nil, fmt.Errorf("parse /proc/loadavg: %w", err)
		}
	}

	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err == nil && e.IsDir() {
			resp.Processes++
		}
	}
	if up, err := readUptime(); err == nil {
		resp.Uptime = durationpb.New(up)
	}
	return resp, nil
}

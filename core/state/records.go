package state

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state/statepb"
	"github.com/boxctl/boxctl/internal/proc"
)

// Box records are stored as protobuf (statepb.Box): listing ten thousand
// boxes must stay well under 100 ms, and JSON decoding alone took half of
// that.

func encodeBox(b *model.Box) ([]byte, error) {
	return proto.Marshal(boxToPB(b))
}

func decodeBox(v []byte) (*model.Box, error) {
	if b, ok := decodeBoxWire(v); ok {
		return b, nil
	}
	var pb statepb.Box
	if err := proto.Unmarshal(v, &pb); err != nil {
		return nil, fmt.Errorf("decode box record: %w", err)
	}
	return boxFromPB(&pb), nil
}

func unixNS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNS(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func identToPB(id proc.Ident) *statepb.Ident {
	if id.IsZero() {
		return nil
	}
	return &statepb.Ident{Pid: int64(id.PID), StartTicks: id.StartTicks, BootId: id.BootID}
}

func identFromPB(pb *statepb.Ident) proc.Ident {
	if pb == nil {
		return proc.Ident{}
	}
	return proc.Ident{PID: int(pb.GetPid()), StartTicks: pb.GetStartTicks(), BootID: pb.GetBootId()}
}

func boxToPB(b *model.Box) *statepb.Box {
	c := b.Config
	pb := &statepb.Box{
		Id:              b.ID,
		Name:            b.Name,
		CreatedAtUnixNs: unixNS(b.CreatedAt),
		Config: &statepb.BoxConfig{
			Image:             c.Image,
			Entrypoint:        c.Entrypoint,
			EntrypointSet:     c.Entrypoint != nil,
			Cmd:               c.Cmd,
			CmdSet:            c.Cmd != nil,
			Env:               c.Env,
			WorkingDir:        c.WorkingDir,
			User:              c.User,
			Cpus:              int64(c.CPUs),
			MemoryMib:         c.MemoryMiB,
			DiskSize:          c.DiskSize,
			AutoRemove:        c.AutoRemove,
			Detach:            c.Detach,
			Labels:            c.Labels,
			Platform:          c.Platform,
			AllowHostLoopback: c.AllowHostLoopback,
			NetworkMode:       c.NetworkMode,
			AllowNet:          c.AllowNet,
			Hostname:          c.Hostname,
		},
		Status:         string(b.Status),
		ImageDigest:    b.ImageDigest,
		DiskId:         b.DiskID,
		DiskCreated:    b.DiskCreated,
		ClonedFrom:     b.ClonedFrom,
		ClonedSnapshot: b.ClonedSnapshot,
		Error:          b.Error,
		Pending:        b.Pending,
		SandboxUid:     b.SandboxUID,
		Vmm:            b.VMM,
	}
	for _, m := range c.Mounts {
		pb.Config.Mounts = append(pb.Config.Mounts, &statepb.Mount{Kind: string(m.Kind), Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	for _, pm := range c.Ports {
		pb.Config.Ports = append(pb.Config.Ports, &statepb.PortMapping{HostIp: pm.HostIP, HostPort: uint32(pm.HostPort), GuestPort: uint32(pm.GuestPort), Protocol: pm.Protocol})
	}
	if ic := b.Image; ic != nil {
		pb.Image = &statepb.ImageConfig{Entrypoint: ic.Entrypoint, Cmd: ic.Cmd, Env: ic.Env, WorkingDir: ic.WorkingDir, User: ic.User, StopSignal: ic.StopSignal}
	}
	if h := c.Health; h != nil {
		pb.Config.Health = &statepb.HealthCheck{Cmd: h.Cmd, IntervalNs: int64(h.Interval), TimeoutNs: int64(h.Timeout), Retries: int64(h.Retries), StartPeriodNs: int64(h.StartPeriod)}
	}
	if h := b.Health; h != (model.Health{}) {
		pb.Health = &statepb.Health{Status: h.Status, FailingStreak: int64(h.FailingStreak), LastOutput: h.LastOutput, LastCheckUnixNs: unixNS(h.LastCheck)}
	}
	if r := b.Run; r != nil {
		pb.Run = &statepb.Run{
			Id:              r.ID,
			Detached:        r.Detached,
			Owner:           identToPB(r.Owner),
			Monitor:         identToPB(r.Monitor),
			Vm:              identToPB(r.VM),
			Handle:          r.Handle,
			Vmm:             r.VMM,
			AgentSocket:     r.AgentSocket,
			ConsoleLog:      r.ConsoleLog,
			StartedAtUnixNs: unixNS(r.StartedAt),
			StateFile:       r.StateFile,
			RestoredFrom:    r.RestoredFrom,
			Accelerator:     r.Accelerator,
		}
		if e := r.Exit; e != nil {
			pb.Run.Exit = &statepb.Exit{Code: int64(e.Code), Signal: int64(e.Signal), Reason: e.Reason, AtUnixNs: unixNS(e.At)}
		}
		if p := r.Pause; p != nil {
			pb.Run.Pause = &statepb.Pause{Cause: p.Cause, Reason: p.Reason, Device: p.Device, AtUnixNs: unixNS(p.At)}
		}
	}
	return pb
}

func boxFromPB(pb *statepb.Box) *model.Box {
	c := pb.GetConfig()
	b := &model.Box{
		ID:        pb.GetId(),
		Name:      pb.GetName(),
		CreatedAt: fromUnixNS(pb.GetCreatedAtUnixNs()),
		Config: model.BoxConfig{
			Image:             c.GetImage(),
			Env:               c.GetEnv(),
			WorkingDir:        c.GetWorkingDir(),
			User:              c.GetUser(),
			CPUs:              int(c.GetCpus()),
			MemoryMiB:         c.GetMemoryMib(),
			DiskSize:          c.GetDiskSize(),
			AutoRemove:        c.GetAutoRemove(),
			Detach:            c.GetDetach(),
			Labels:            c.GetLabels(),
			Platform:          c.GetPlatform(),
			AllowHostLoopback: c.GetAllowHostLoopback(),
			NetworkMode:       c.GetNetworkMode(),
			AllowNet:          c.GetAllowNet(),
			Hostname:          c.GetHostname(),
		},
		Status:         model.Status(pb.GetStatus()),
		ImageDigest:    pb.GetImageDigest(),
		DiskID:         pb.GetDiskId(),
		DiskCreated:    pb.GetDiskCreated(),
		ClonedFrom:     pb.GetClonedFrom(),
		ClonedSnapshot: pb.GetClonedSnapshot(),
		Error:          pb.GetError(),
		Pending:        pb.GetPending(),
		SandboxUID:     pb.GetSandboxUid(),
		VMM:            pb.GetVmm(),
	}
	if c.GetEntrypointSet() {
		b.Config.Entrypoint = append([]string{}, c.GetEntrypoint()...)
	}
	if c.GetCmdSet() {
		b.Config.Cmd = append([]string{}, c.GetCmd()...)
	}
	for _, m := range c.GetMounts() {
		b.Config.Mounts = append(b.Config.Mounts, model.Mount{Kind: model.MountKind(m.GetKind()), Source: m.GetSource(), Target: m.GetTarget(), ReadOnly: m.GetReadOnly()})
	}
	for _, pm := range c.GetPorts() {
		b.Config.Ports = append(b.Config.Ports, model.PortMapping{HostIP: pm.GetHostIp(), HostPort: uint16(pm.GetHostPort()), GuestPort: uint16(pm.GetGuestPort()), Protocol: pm.GetProtocol()})
	}
	if ic := pb.GetImage(); ic != nil {
		b.Image = &model.ImageConfig{Entrypoint: ic.GetEntrypoint(), Cmd: ic.GetCmd(), Env: ic.GetEnv(), WorkingDir: ic.GetWorkingDir(), User: ic.GetUser(), StopSignal: ic.GetStopSignal()}
	}
	if h := c.GetHealth(); h != nil {
		b.Config.Health = &model.HealthCheck{Cmd: h.GetCmd(), Interval: time.Duration(h.GetIntervalNs()), Timeout: time.Duration(h.GetTimeoutNs()), Retries: int(h.GetRetries()), StartPeriod: time.Duration(h.GetStartPeriodNs())}
	}
	if h := pb.GetHealth(); h != nil {
		b.Health = model.Health{Status: h.GetStatus(), FailingStreak: int(h.GetFailingStreak()), LastOutput: h.GetLastOutput(), LastCheck: fromUnixNS(h.GetLastCheckUnixNs())}
	}
	if r := pb.GetRun(); r != nil {
		b.Run = &model.Run{
			ID:           r.GetId(),
			Detached:     r.GetDetached(),
			Owner:        identFromPB(r.GetOwner()),
			Monitor:      identFromPB(r.GetMonitor()),
			VM:           identFromPB(r.GetVm()),
			Handle:       r.GetHandle(),
			VMM:          r.GetVmm(),
			AgentSocket:  r.GetAgentSocket(),
			ConsoleLog:   r.GetConsoleLog(),
			StartedAt:    fromUnixNS(r.GetStartedAtUnixNs()),
			StateFile:    r.GetStateFile(),
			RestoredFrom: r.GetRestoredFrom(),
			Accelerator:  r.GetAccelerator(),
		}
		if e := r.GetExit(); e != nil {
			b.Run.Exit = &model.Exit{Code: int(e.GetCode()), Signal: int(e.GetSignal()), Reason: e.GetReason(), At: fromUnixNS(e.GetAtUnixNs())}
		}
		if p := r.GetPause(); p != nil {
			b.Run.Pause = &model.Pause{Cause: p.GetCause(), Reason: p.GetReason(), Device: p.GetDevice(), At: fromUnixNS(p.GetAtUnixNs())}
		}
	}
	return b
}

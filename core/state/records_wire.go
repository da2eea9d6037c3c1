package state

import (
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/internal/proc"
)

// decodeBoxWire decodes a statepb.Box record straight from the wire into a
// model.Box, with the same result as proto.Unmarshal followed by boxFromPB
// (records_test.go checks that they agree). Reading every box is what `ls`
// spends its time on, and proto.Unmarshal's first use in a process also
// builds the reflection tables of every message in the record, which each
// short-lived boxctl command paid for. Any input it does not accept goes to
// the generated decoder, which then reports the error.
func decodeBoxWire(v []byte) (*model.Box, bool) {
	b := &model.Box{}
	var entry, cmd []string
	var entrySet, cmdSet bool
	ok := fields(v, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
		switch num {
		case 1:
			return str(typ, raw, &b.ID)
		case 2:
			return str(typ, raw, &b.Name)
		case 3:
			return varintNS(typ, val, &b.CreatedAt)
		case 4:
			return typ == protowire.BytesType && decodeConfigWire(raw, &b.Config, &entry, &cmd, &entrySet, &cmdSet)
		case 5:
			var s string
			if !str(typ, raw, &s) {
				return false
			}
			b.Status = model.Status(s)
		case 6:
			if typ != protowire.BytesType {
				return false
			}
			if b.Run == nil {
				b.Run = &model.Run{}
			}
			return decodeRunWire(raw, b.Run)
		case 7:
			return str(typ, raw, &b.ImageDigest)
		case 8:
			return str(typ, raw, &b.DiskID)
		case 9:
			return boolean(typ, val, &b.DiskCreated)
		case 10:
			return str(typ, raw, &b.ClonedFrom)
		case 11:
			return str(typ, raw, &b.Error)
		case 12:
			if typ != protowire.BytesType {
				return false
			}
			ns, streak := unixNS(b.Health.LastCheck), int64(b.Health.FailingStreak)
			ok := fields(raw, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
				switch num {
				case 1:
					return str(typ, raw, &b.Health.Status)
				case 2:
					return varint64(typ, val, &streak)
				case 3:
					return str(typ, raw, &b.Health.LastOutput)
				case 4:
					return varint64(typ, val, &ns)
				}
				return true
			})
			b.Health.FailingStreak, b.Health.LastCheck = int(streak), fromUnixNS(ns)
			return ok
		case 13:
			return str(typ, raw, &b.Pending)
		case 14:
			if typ != protowire.BytesType {
				return false
			}
			if b.Image == nil {
				b.Image = &model.ImageConfig{}
			}
			ic := b.Image
			return fields(raw, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
				switch num {
				case 1:
					return strs(typ, raw, &ic.Entrypoint)
				case 2:
					return strs(typ, raw, &ic.Cmd)
				case 3:
					return strs(typ, raw, &ic.Env)
				case 4:
					return str(typ, raw, &ic.WorkingDir)
				case 5:
					return str(typ, raw, &ic.User)
				case 6:
					return str(typ, raw, &ic.StopSignal)
				}
				return true
			})
		case 15:
			if typ != protowire.VarintType {
				return false
			}
			b.SandboxUID = uint32(val)
		case 16:
			return str(typ, raw, &b.ClonedSnapshot)
		case 17:
			return str(typ, raw, &b.VMM)
		}
		return true
	})
	if !ok {
		return nil, false
	}
	if entrySet {
		b.Config.Entrypoint = append([]string{}, entry...)
	}
	if cmdSet {
		b.Config.Cmd = append([]string{}, cmd...)
	}
	return b, true
}

func decodeConfigWire(v []byte, c *model.BoxConfig, entry, cmd *[]string, entrySet, cmdSet *bool) bool {
	return fields(v, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
		switch num {
		case 1:
			return str(typ, raw, &c.Image)
		case 2:
			return strs(typ, raw, entry)
		case 3:
			return boolean(typ, val, entrySet)
		case 4:
			return strs(typ, raw, cmd)
		case 5:
			return boolean(typ, val, cmdSet)
		case 6:
			return strs(typ, raw, &c.Env)
		case 7:
			return str(typ, raw, &c.WorkingDir)
		case 8:
			return str(typ, raw, &c.User)
		case 9:
			var n int64
			if !varint64(typ, val, &n) {
				return false
			}
			c.CPUs = int(n)
		case 10:
			return uvarint(typ, val, &c.MemoryMiB)
		case 11:
			return uvarint(typ, val, &c.DiskSize)
		case 12:
			return boolean(typ, val, &c.AutoRemove)
		case 13:
			return boolean(typ, val, &c.Detach)
		case 14:
			if typ != protowire.BytesType {
				return false
			}
			var k, v string
			if !fields(raw, func(num protowire.Number, typ protowire.Type, _ uint64, raw []byte) bool {
				switch num {
				case 1:
					return str(typ, raw, &k)
				case 2:
					return str(typ, raw, &v)
				}
				return true
			}) {
				return false
			}
			if c.Labels == nil {
				c.Labels = map[string]string{}
			}
			c.Labels[k] = v
		case 15:
			if typ != protowire.BytesType {
				return false
			}
			if c.Health == nil {
				c.Health = &model.HealthCheck{}
			}
			h := c.Health
			return fields(raw, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
				var n int64
				switch num {
				case 1:
					return strs(typ, raw, &h.Cmd)
				case 2:
					ok := varint64(typ, val, &n)
					h.Interval = time.Duration(n)
					return ok
				case 3:
					ok := varint64(typ, val, &n)
					h.Timeout = time.Duration(n)
					return ok
				case 4:
					ok := varint64(typ, val, &n)
					h.Retries = int(n)
					return ok
				case 5:
					ok := varint64(typ, val, &n)
					h.StartPeriod = time.Duration(n)
					return ok
				}
				return true
			})
		case 16:
			return str(typ, raw, &c.Platform)
		case 17:
			if typ != protowire.BytesType {
				return false
			}
			var pm model.PortMapping
			if !fields(raw, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
				switch num {
				case 1:
					return str(typ, raw, &pm.HostIP)
				case 2, 3:
					if typ != protowire.VarintType {
						return false
					}
					if num == 2 {
						pm.HostPort = uint16(uint32(val))
					} else {
						pm.GuestPort = uint16(uint32(val))
					}
				case 4:
					return str(typ, raw, &pm.Protocol)
				}
				return true
			}) {
				return false
			}
			c.Ports = append(c.Ports, pm)
		case 20:
			return boolean(typ, val, &c.AllowHostLoopback)
		case 22:
			return str(typ, raw, &c.NetworkMode)
		case 24:
			return str(typ, raw, &c.Hostname)
		case 23:
			var a string
			if !str(typ, raw, &a) {
				return false
			}
			c.AllowNet = append(c.AllowNet, a)
		case 21:
			if typ != protowire.BytesType {
				return false
			}
			var m model.Mount
			if !fields(raw, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
				switch num {
				case 1:
					var k string
					ok := str(typ, raw, &k)
					m.Kind = model.MountKind(k)
					return ok
				case 2:
					return str(typ, raw, &m.Source)
				case 3:
					return str(typ, raw, &m.Target)
				case 4:
					return boolean(typ, val, &m.ReadOnly)
				}
				return true
			}) {
				return false
			}
			c.Mounts = append(c.Mounts, m)
		}
		return true
	})
}

func decodeRunWire(v []byte, r *model.Run) bool {
	return fields(v, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
		switch num {
		case 1:
			return str(typ, raw, &r.ID)
		case 2:
			return boolean(typ, val, &r.Detached)
		case 3:
			return typ == protowire.BytesType && decodeIdentWire(raw, &r.Owner)
		case 4:
			return typ == protowire.BytesType && decodeIdentWire(raw, &r.Monitor)
		case 5:
			return typ == protowire.BytesType && decodeIdentWire(raw, &r.VM)
		case 6:
			if typ != protowire.BytesType {
				return false
			}
			r.Handle = append([]byte{}, raw...)
		case 7:
			return str(typ, raw, &r.VMM)
		case 8:
			return str(typ, raw, &r.AgentSocket)
		case 9:
			return str(typ, raw, &r.ConsoleLog)
		case 10:
			return varintNS(typ, val, &r.StartedAt)
		case 11:
			if typ != protowire.BytesType {
				return false
			}
			if r.Exit == nil {
				r.Exit = &model.Exit{}
			}
			e := r.Exit
			code, sig, at := int64(e.Code), int64(e.Signal), unixNS(e.At)
			ok := fields(raw, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
				switch num {
				case 1:
					return varint64(typ, val, &code)
				case 2:
					return varint64(typ, val, &sig)
				case 3:
					return str(typ, raw, &e.Reason)
				case 4:
					return varint64(typ, val, &at)
				}
				return true
			})
			e.Code, e.Signal, e.At = int(code), int(sig), fromUnixNS(at)
			return ok
		case 12:
			return str(typ, raw, &r.StateFile)
		case 13:
			if typ != protowire.BytesType {
				return false
			}
			if r.Pause == nil {
				r.Pause = &model.Pause{}
			}
			p := r.Pause
			at := unixNS(p.At)
			ok := fields(raw, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
				switch num {
				case 1:
					return str(typ, raw, &p.Cause)
				case 2:
					return str(typ, raw, &p.Reason)
				case 3:
					return str(typ, raw, &p.Device)
				case 4:
					return varint64(typ, val, &at)
				}
				return true
			})
			p.At = fromUnixNS(at)
			return ok
		case 14:
			return str(typ, raw, &r.RestoredFrom)
		case 15:
			return str(typ, raw, &r.Accelerator)
		}
		return true
	})
}

func decodeIdentWire(v []byte, id *proc.Ident) bool {
	pid := int64(id.PID)
	ok := fields(v, func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool {
		switch num {
		case 1:
			return varint64(typ, val, &pid)
		case 2:
			return uvarint(typ, val, &id.StartTicks)
		case 3:
			return str(typ, raw, &id.BootID)
		}
		return true
	})
	id.PID = int(pid)
	return ok
}

// fields calls fn for each field of a message: the value of a varint
// field, the contents of a length-delimited one. Other wire types are
// skipped when fn does not know the field, and refused when it does
// (fn sees them with neither). It stops at the first false.
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, val uint64, raw []byte) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		var val uint64
		var raw []byte
		switch typ {
		case protowire.VarintType:
			val, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			raw, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n >= 0 && !fn(num, typ, 0, nil) {
				return false
			}
			if n < 0 {
				return false
			}
			b = b[n:]
			continue
		}
		if n < 0 {
			return false
		}
		b = b[n:]
		if !fn(num, typ, val, raw) {
			return false
		}
	}
	return true
}

func str(typ protowire.Type, raw []byte, dst *string) bool {
	if typ != protowire.BytesType || !utf8.Valid(raw) {
		return false
	}
	*dst = string(raw)
	return true
}

func strs(typ protowire.Type, raw []byte, dst *[]string) bool {
	var s string
	if !str(typ, raw, &s) {
		return false
	}
	*dst = append(*dst, s)
	return true
}

func boolean(typ protowire.Type, val uint64, dst *bool) bool {
	*dst = val != 0
	return typ == protowire.VarintType
}

func varint64(typ protowire.Type, val uint64, dst *int64) bool {
	*dst = int64(val)
	return typ == protowire.VarintType
}

func uvarint(typ protowire.Type, val uint64, dst *uint64) bool {
	*dst = val
	return typ == protowire.VarintType
}

func varintNS(typ protowire.Type, val uint64, dst *time.Time) bool {
	*dst = fromUnixNS(int64(val))
	return typ == protowire.VarintType
}

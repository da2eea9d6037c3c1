package sdktest

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestParsePing(t *testing.T) {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType) // agent_version
	b = protowire.AppendString(b, "v1")
	b = protowire.AppendTag(b, 2, protowire.VarintType) // protocol_version
	b = protowire.AppendVarint(b, 1)
	b = protowire.AppendTag(b, pingRootError, protowire.BytesType)
	b = protowire.AppendString(b, "no ext4")
	if mounted, why := parsePing(b); mounted || why != "no ext4" {
		t.Errorf("root error: mounted=%v why=%q", mounted, why)
	}
	b = protowire.AppendTag(b, pingRootMounted, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	if mounted, _ := parsePing(b); !mounted {
		t.Error("root_mounted not seen")
	}
	if mounted, _ := parsePing([]byte{0xff}); mounted {
		t.Error("garbage read as mounted")
	}
}

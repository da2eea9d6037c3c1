package integration

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/core/model"
)

// Network modes and allow-lists are checked at create, with the config
// file's defaults filled in, and shown by inspect.
func TestCLINetworkModesAndAllowList(t *testing.T) {
	e := newEnv(t, "defaults {\n  allow_net = [\"example.com:443\"]\n}\n")
	inspect := func(name string) model.BoxConfig {
		t.Helper()
		var boxes []model.Box
		if err := json.Unmarshal([]byte(e.ok("inspect", name)), &boxes); err != nil || len(boxes) != 1 {
			t.Fatalf("inspect %s: %v", name, err)
		}
		return boxes[0].Config
	}

	e.ok("create", "--name", "dflt", testImage)
	if c := inspect("dflt"); c.NetworkMode != "user" || !slices.Equal(c.AllowNet, []string{"example.com:443"}) {
		t.Errorf("a box with the config's defaults: network %q, allow_net %q", c.NetworkMode, c.AllowNet)
	}
	e.ok("create", "--name", "own", "--allow-net", "10.1.0.0/16:80", "--allow-net", "192.0.2.7", testImage)
	if c := inspect("own"); !slices.Equal(c.AllowNet, []string{"10.1.0.0/16:80", "192.0.2.7"}) {
		t.Errorf("--allow-net given twice: allow_net %q", c.AllowNet)
	}
	// The default allow-list is for boxes with a network.
	e.ok("create", "--name", "off", "--network", "none", testImage)
	if c := inspect("off"); c.NetworkMode != "none" || len(c.AllowNet) != 0 {
		t.Errorf("--network none: network %q, allow_net %q", c.NetworkMode, c.AllowNet)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--allow-net", "10.1.2.3/16"}, "did you mean 10.1.0.0/16"},
		{[]string{"--allow-net", "example.com:99999"}, "not a number from 1 to 65535"},
		{[]string{"--allow-net", "bad name"}, "not allowed in a host name"},
		{[]string{"--network", "bridge"}, `network mode "bridge"`},
		{[]string{"--network", "none", "--allow-net", "example.com"}, "--allow-net needs a network"},
		{[]string{"--network", "none", "-p", "8080:80"}, "-p) needs a network"},
	} {
		args := append(append([]string{"create"}, c.args...), testImage)
		_, errs, code := e.cli(args...)
		if code != 125 || !strings.Contains(errs, c.want) {
			t.Errorf("boxctl %v: exit %d, stderr %q; want 125 and %q", args, code, errs, c.want)
		}
	}
	if out := e.ok("ls", "-a", "-q"); strings.Count(strings.TrimSpace(out), "\n") != 2 {
		t.Errorf("refused creates left boxes behind:\n%s", out)
	}
	// The procvmm test double does not declare "network-allow": a box
	// with an allow-list must not start on it unconfined.
	_, errs, code := e.cli("start", "own")
	if code != 125 || !strings.Contains(errs, "does not enforce one") {
		t.Errorf("start of a box with an allow-list on a VMM without network-allow: exit %d, %q", code, errs)
	}
	if out := e.ok("ls", "-a", "--format", "{{.Name}} {{.Status}}"); !strings.Contains(out, "own configured") {
		t.Errorf("the refused start changed the box:\n%s", out)
	}
	e.ok("start", "off") // no allow-list: starts
	e.ok("rm", "-f", "off")
}

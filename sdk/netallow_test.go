package sdk

import (
	"slices"
	"strings"
	"testing"
)

func TestParseNetworkAllow(t *testing.T) {
	for in, want := range map[string]string{
		"example.com":         "example.com",
		"API.Example.com.":    "api.example.com",
		"example.com:443":     "example.com:443",
		"10.1.0.0/16":         "10.1.0.0/16",
		"10.1.0.0/16:80":      "10.1.0.0/16:80",
		"192.0.2.7":           "192.0.2.7",
		"192.0.2.7:53":        "192.0.2.7:53",
		"2001:db8::1":         "2001:db8::1",
		"[2001:db8::/32]:443": "[2001:db8::/32]:443",
	} {
		a, err := ParseNetworkAllow(in)
		if err != nil {
			t.Errorf("ParseNetworkAllow(%q): %v", in, err)
			continue
		}
		if a.String() != want {
			t.Errorf("ParseNetworkAllow(%q) = %q, want %q", in, a.String(), want)
		}
		if b, err := ParseNetworkAllow(a.String()); err != nil || b != a {
			t.Errorf("%q does not read back: %+v, %v", a.String(), b, err)
		}
	}
	for in, want := range map[string]string{
		"":                  "empty",
		"example.com:0":     "port",
		"example.com:x":     "port",
		"example.com:70000": "port",
		"10.1.2.3/16":       "did you mean 10.1.0.0/16",
		"10.1.0.0/33":       "not a CIDR",
		"bad name":          "not allowed in a host name",
		"[2001:db8::1":      "closing",
		"a..b":              "label",
	} {
		_, err := ParseNetworkAllow(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseNetworkAllow(%q): %v; want an error containing %q", in, err, want)
		}
	}
}

func TestNetworkAllowCrossesTheWire(t *testing.T) {
	var allow []NetworkAllow
	for _, s := range []string{"example.com:443", "10.1.0.0/16", "[2001:db8::/32]:80"} {
		a, err := ParseNetworkAllow(s)
		if err != nil {
			t.Fatal(err)
		}
		allow = append(allow, a)
	}
	got := specFromProto(specToProto(VMSpec{Network: NetworkSpec{Mode: NetworkUser, Allow: allow}})).Network.Allow
	if !slices.Equal(got, allow) {
		t.Errorf("allow-list %v came back as %v", allow, got)
	}
	p := specToProto(VMSpec{Network: NetworkSpec{Mode: NetworkUser, Allow: allow}})
	p.Network.Allow[1].Cidr = "10.1.0.0/99"
	bad := specFromProto(p).Network.Allow[1]
	if bad.Validate() == nil {
		t.Errorf("a CIDR that does not parse became %+v, which validates", bad)
	}
}

package guestboot

import (
	"reflect"
	"strings"
	"testing"
)

// TestArgsParseRoundTrip: what the host renders is what the agent reads back, box ID
// included.
func TestArgsParseRoundTrip(t *testing.T) {
	c := Default()
	c.Hostname = "0123abcd"
	c.BoxID = "0123abcdef0123abcdef0123abcdef0123abcdef0123abcdef0123abcdef0123"
	c.UserNetwork()
	c.Debug = true
	args := c.Args()
	if !strings.Contains(strings.Join(args, " "), KeyBoxID+"="+c.BoxID) {
		t.Fatalf("args %q lack the box ID", args)
	}
	got, warnings := Parse("console=ttyS0 " + strings.Join(args, " "))
	if len(warnings) != 0 {
		t.Errorf("warnings: %q", warnings)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, c)
	}
	// No box ID: no key (an agent that predates it would warn about an empty one).
	if s := strings.Join(Default().Args(), " "); strings.Contains(s, KeyBoxID) {
		t.Errorf("args without a box ID carry the key: %s", s)
	}
}

// TestParseRejectsBadIdentity: a malformed box ID or host name on the command line is a
// warning and leaves the default, never reaches the guest.
func TestParseRejectsBadIdentity(t *testing.T) {
	c, warnings := Parse("boxctl.box_id=ABC boxctl.hostname=-bad")
	if c.BoxID != "" || c.Hostname != Hostname || len(warnings) != 2 {
		t.Errorf("got box ID %q, host name %q, warnings %q; want both ignored with 2 warnings", c.BoxID, c.Hostname, warnings)
	}
}

func TestValidBoxID(t *testing.T) {
	for _, ok := range []string{"a", "0123456789abcdef", strings.Repeat("f", MaxBoxIDLen)} {
		if err := ValidBoxID(ok); err != nil {
			t.Errorf("ValidBoxID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "ABC", "a-b", "a b", "a\nb", "é", strings.Repeat("f", MaxBoxIDLen+1)} {
		if err := ValidBoxID(bad); err == nil {
			t.Errorf("ValidBoxID(%q) accepted", bad)
		}
	}
}

func TestValidHostname(t *testing.T) {
	for _, ok := range []string{"box", "web-1", "a.b.c", "0123abcd", "X", strings.Repeat("h", MaxHostnameLen)} {
		if err := ValidHostname(ok); err != nil {
			t.Errorf("ValidHostname(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "a..b", ".a", "a.", "a_b", "a b", "a\tb", "a/b",
		strings.Repeat("h", MaxHostnameLen+1)} {
		if err := ValidHostname(bad); err == nil {
			t.Errorf("ValidHostname(%q) accepted", bad)
		}
	}
}

func TestMountsRoundTrip(t *testing.T) {
	c := Default()
	c.Mounts = []Mount{
		{Kind: MountShare, Source: "share0", Target: "/srv/my data:1", ReadOnly: true},
		{Kind: MountDisk, Source: "vdc", Target: "/data"},
	}
	args := c.Args()
	got, warnings := Parse(strings.Join(args, " "))
	if len(warnings) != 0 {
		t.Fatalf("warnings %v for %v", warnings, args)
	}
	if !reflect.DeepEqual(got.Mounts, c.Mounts) {
		t.Fatalf("mounts %+v, want %+v (args %v)", got.Mounts, c.Mounts, args)
	}
	if !got.Has9p() || got.HasVirtioFS() {
		t.Fatal("a share without boxctl.sharefs is not 9p")
	}
	vfs, warnings := Parse(strings.Join(append(args, ShareFSArg(ShareFSVirtioFS)), " "))
	if len(warnings) != 0 || !vfs.HasVirtioFS() || vfs.Has9p() {
		t.Fatalf("with %s: HasVirtioFS %v, Has9p %v, warnings %v", ShareFSArg(ShareFSVirtioFS), vfs.HasVirtioFS(), vfs.Has9p(), warnings)
	}
	// What a host before boxctl.sharefs wrote.
	old, warnings := Parse("boxctl.mount=9p:boxctl0:/w:rw")
	if len(warnings) != 0 || len(old.Mounts) != 1 || old.Mounts[0].Kind != MountShare || !old.Has9p() {
		t.Fatalf("old 9p kind: %+v, warnings %v", old.Mounts, warnings)
	}
	for _, a := range args {
		if strings.ContainsAny(a, " \t") {
			t.Fatalf("argument %q has whitespace", a)
		}
	}
}

func TestBadMountsAreWarnings(t *testing.T) {
	for _, arg := range []string{"boxctl.mount=9p:tag:/x", "boxctl.mount=nfs:a:/x:rw", "boxctl.mount=9p:tag:rel:rw", "boxctl.mount=disk::/x:rw", "boxctl.mount=disk:vdc:/x:rx"} {
		c, w := Parse(arg)
		if len(c.Mounts) != 0 || len(w) != 1 {
			t.Errorf("%s: mounts %+v, warnings %v; want none and one warning", arg, c.Mounts, w)
		}
	}
	if c, _ := Parse("quiet " + ShareFSArg(ShareFSVirtioFS)); c.Has9p() || c.HasVirtioFS() {
		t.Error("Has9p or HasVirtioFS true without mounts")
	}
	if c, w := Parse("boxctl.sharefs=nfs"); c.ShareFS != ShareFS9p || len(w) != 1 {
		t.Errorf("boxctl.sharefs=nfs: ShareFS %q, warnings %v; want 9p and one warning", c.ShareFS, w)
	}
}

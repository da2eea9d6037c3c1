package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// ErrUnknownUser means a user or group name is not in the box's /etc/passwd or /etc/group.
var ErrUnknownUser = errors.New("unknown user or group")

// execUser is a resolved ExecStart.user.
type execUser struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32 // supplementary groups
	home   string
}

type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// resolveUser resolves spec ("name", "uid", "uid:gid", "name:group", "uid:group"; empty
// means root) against the contents of the box's /etc/passwd and /etc/group (either may be
// nil when the file is missing).
func resolveUser(spec string, passwd, group []byte) (execUser, error) {
	users := parsePasswd(passwd)
	groups := parseGroup(group)

	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" {
		if hasGroup {
			return execUser{}, fmt.Errorf("user %q: empty user name", spec)
		}
		userPart = "0"
	}

	u := execUser{home: "/"}
	var found *passwdEntry
	if id, err := parseID(userPart); err == nil {
		u.uid = id
		for i := range users {
			if users[i].uid == id {
				found = &users[i]
				break
			}
		}
	} else {
		for i := range users {
			if users[i].name == userPart {
				found = &users[i]
				break
			}
		}
		if found == nil {
			return execUser{}, fmt.Errorf("user %q not found in /etc/passwd: %w", userPart, ErrUnknownUser)
		}
	}
	if found != nil {
		u.name, u.uid, u.gid, u.home = found.name, found.uid, found.gid, found.home
		if u.home == "" {
			u.home = "/"
		}
	}

	if hasGroup {
		if groupPart == "" {
			return execUser{}, fmt.Errorf("user %q: empty group", spec)
		}
		if id, err := parseID(groupPart); err == nil {
			u.gid = id
		} else {
			var g *groupEntry
			for i := range groups {
				if groups[i].name == groupPart {
					g = &groups[i]
					break
				}
			}
			if g == nil {
				return execUser{}, fmt.Errorf("group %q not found in /etc/group: %w", groupPart, ErrUnknownUser)
			}
			u.gid = g.gid
		}
	}

	if u.name != "" {
		seen := map[uint32]bool{}
		for _, g := range groups {
			for _, m := range g.members {
				if m == u.name && !seen[g.gid] {
					seen[g.gid] = true
					u.groups = append(u.groups, g.gid)
				}
			}
		}
		sort.Slice(u.groups, func(i, j int) bool { return u.groups[i] < u.groups[j] })
	}
	return u, nil
}

func parseID(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 10, 32)
	return uint32(v), err
}

// parsePasswd reads name:password:uid:gid:gecos:home:shell lines, skipping malformed ones
// (as libc does) rather than failing every exec on one bad line.
func parsePasswd(b []byte) []passwdEntry {
	var out []passwdEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < 6 {
			continue
		}
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, passwdEntry{name: f[0], uid: uid, gid: gid, home: f[5]})
	}
	return out
}

// parseGroup reads name:password:gid:member,member lines.
func parseGroup(b []byte) []groupEntry {
	var out []groupEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < 3 {
			continue
		}
		gid, err := parseID(f[2])
		if err != nil {
			continue
		}
		g := groupEntry{name: f[0], gid: gid}
		if len(f) > 3 && f[3] != "" {
			for _, m := range strings.Split(f[3], ",") {
				if m = strings.TrimSpace(m); m != "" {
					g.members = append(g.members, m)
				}
			}
		}
		out = append(out, g)
	}
	return out
}

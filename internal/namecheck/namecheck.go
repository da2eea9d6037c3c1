// Package namecheck matches names and digests against the simple patterns
// boxctl accepts (box, snapshot, checkpoint, plugin and archive member
// names; sha256 hex digests) without regular expressions: a package-level
// regexp is compiled during package initialisation, which every boxctl
// command paid for at start-up whether it checked a name or not.
package namecheck

// Name reports whether s is one byte first accepts followed by at most
// maxRest bytes rest accepts (the pattern ^[first][rest]{0,maxRest}$).
func Name(s string, first, rest func(byte) bool, maxRest int) bool {
	if len(s) == 0 || len(s) > 1+maxRest || !first(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !rest(s[i]) {
			return false
		}
	}
	return true
}

// Alnum is [a-zA-Z0-9].
func Alnum(c byte) bool { return LowerAlnum(c) || 'A' <= c && c <= 'Z' }

// LowerAlnum is [a-z0-9].
func LowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// BoxNameRest is [a-zA-Z0-9_.-], what a box, snapshot or checkpoint name
// continues with.
func BoxNameRest(c byte) bool { return Alnum(c) || c == '_' || c == '.' || c == '-' }

// BoxName is ^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$.
func BoxName(s string) bool { return Name(s, Alnum, BoxNameRest, 127) }

// SHA256Hex reports whether s is 64 lowercase hex digits.
func SHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

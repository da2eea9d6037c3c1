package namecheck

import (
	"regexp"
	"strings"
	"testing"
)

// The matchers replace these regular expressions; they must agree on
// every input, edge lengths and bytes outside the classes included.
func TestAgreesWithTheRegexps(t *testing.T) {
	lowerRest := func(c byte) bool { return LowerAlnum(c) || c == '-' }
	memberRest := func(c byte) bool { return LowerAlnum(c) || c == '.' || c == '_' || c == '-' }
	cases := []struct {
		re    *regexp.Regexp
		match func(string) bool
	}{
		{regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`), BoxName},
		{regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`), func(s string) bool { return Name(s, LowerAlnum, lowerRest, 62) }},
		{regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`), func(s string) bool { return Name(s, LowerAlnum, memberRest, 63) }},
		{regexp.MustCompile(`^[0-9a-f]{64}$`), SHA256Hex},
	}
	inputs := []string{"", "a", "A", "0", "-a", "_a", ".a", "a-b", "a_b", "a.b", "aB", "Ab", "a b", "a\n", "a/b", "é", "a\x00",
		strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 65), strings.Repeat("a", 128), strings.Repeat("a", 129),
		strings.Repeat("f", 64), strings.Repeat("F", 64), strings.Repeat("0", 63), strings.Repeat("0", 64) + "\n", strings.Repeat("g", 64)}
	for c := 0; c < 256; c++ {
		inputs = append(inputs, string([]byte{byte(c)}), "a"+string([]byte{byte(c)}), strings.Repeat("a", 63)+string([]byte{byte(c)}))
	}
	for i, tc := range cases {
		for _, in := range inputs {
			if got, want := tc.match(in), tc.re.MatchString(in); got != want {
				t.Errorf("pattern %d (%s) on %q: got %v, want %v", i, tc.re, in, got, want)
			}
		}
	}
}

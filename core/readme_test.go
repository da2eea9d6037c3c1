package core_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeEmbeddingSnippetIsTheExample keeps the README's embedding
// snippet the body of Example, which the compiler checks.
func TestReadmeEmbeddingSnippetIsTheExample(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)## Embedding\n.*?```go\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no go snippet under ## Embedding")
	}
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	body := regexp.MustCompile("(?s)func Example\\(\\) \\{\n(.*)\n\\}\n").FindSubmatch(src)
	if body == nil {
		t.Fatal("example_test.go has no func Example")
	}
	norm := func(b []byte) string {
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, "\n")
	}
	if got, want := norm(m[1]), norm(body[1]); got != want {
		t.Fatalf("README's embedding snippet differs from Example's body:\n--- README\n%s\n--- Example\n%s", got, want)
	}
}

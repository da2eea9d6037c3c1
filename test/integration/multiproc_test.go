package integration

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"
)

// parallelCLI runs n boxctl processes at once and returns their results.
func parallelCLI(e *env, n int, args func(i int) []string) (outs, errs []string, codes []int) {
	outs, errs, codes = make([]string, n), make([]string, n), make([]int, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			outs[i], errs[i], codes[i] = e.cli(args(i)...)
		}()
	}
	close(start)
	wg.Wait()
	return outs, errs, codes
}

func TestConcurrentCreatesWithDistinctNames(t *testing.T) {
	e := newEnv(t, "")
	const n = 16
	_, errs, codes := parallelCLI(e, n, func(i int) []string {
		return []string{"create", "--name", fmt.Sprintf("n%d", i), testImage}
	})
	for i := range codes {
		if codes[i] != 0 {
			t.Errorf("create n%d: exit %d: %s", i, codes[i], errs[i])
		}
	}
	out := e.ok("ls", "-a", "--format", "{{.Name}}")
	names := strings.Fields(out)
	if len(names) != n {
		t.Fatalf("%d boxes listed, want %d: %v", len(names), n, names)
	}
	seen := map[string]bool{}
	for _, nm := range names {
		seen[nm] = true
	}
	for i := 0; i < n; i++ {
		if !seen[fmt.Sprintf("n%d", i)] {
			t.Errorf("n%d missing from ls", i)
		}
	}
	e.assertConsistent(e.runtime())
}

func TestConcurrentCreatesWithOneName(t *testing.T) {
	e := newEnv(t, "")
	const n = 16
	_, errs, codes := parallelCLI(e, n, func(int) []string {
		return []string{"create", "--name", "same", testImage}
	})
	okCount, exists := 0, 0
	for i := range codes {
		switch {
		case codes[i] == 0:
			okCount++
		case codes[i] == 125 && strings.Contains(errs[i], `the name "same" is already in use`) && strings.Contains(errs[i], "already exists"):
			exists++
		default:
			t.Errorf("create %d: exit %d: %s", i, codes[i], errs[i])
		}
	}
	if okCount != 1 || exists != n-1 {
		t.Fatalf("%d succeeded and %d got 'already exists', want 1 and %d", okCount, exists, n-1)
	}
	if names := strings.Fields(e.ok("ls", "-a", "-q")); len(names) != 1 {
		t.Fatalf("%d boxes, want 1", len(names))
	}
	e.assertConsistent(e.runtime())
}

func TestConcurrentGetOrCreateYieldsOneBox(t *testing.T) {
	e := newEnv(t, "")
	const n = 8
	ids := make([]string, n)
	created := make([]bool, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rt := e.runtime() // one runtime each, as separate processes would have
			b, c, err := rt.GetOrCreate(context.Background(), opts("shared"))
			if err != nil {
				t.Error(err)
				return
			}
			ids[i], created[i] = b.ID(), c
		}()
	}
	wg.Wait()
	nCreated := 0
	for i := range ids {
		if ids[i] != ids[0] {
			t.Fatalf("get_or_create gave different boxes: %v", ids)
		}
		if created[i] {
			nCreated++
		}
	}
	if nCreated != 1 {
		t.Fatalf("%d callers were told they created the box, want 1", nCreated)
	}
}

// TestConcurrentCreateRemoveListLoops runs create, rm and ls loops in
// parallel processes for 30 seconds and then checks the store.
func TestConcurrentCreateRemoveListLoops(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s soak; skipped with -short")
	}
	e := newEnv(t, "")
	deadline := time.Now().Add(30 * time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ops := map[string]int{}
	worker := func(kind string, w int) {
		defer wg.Done()
		rng := rand.New(rand.NewSource(int64(w)))
		for time.Now().Before(deadline) {
			name := fmt.Sprintf("box-%d", rng.Intn(12)) // not hex: never an ID prefix
			var args []string
			switch kind {
			case "create":
				args = []string{"create", "--name", name, testImage}
			case "rm":
				args = []string{"rm", name}
			case "ls":
				args = []string{"ls", "-a"}
			}
			_, errs, code := e.cli(args...)
			if code != 0 && code != 125 {
				t.Errorf("%v: exit %d: %s", args, code, errs)
			}
			if code == 125 && !strings.Contains(errs, "already exists") && !strings.Contains(errs, "not found") {
				t.Errorf("%v: unexpected failure: %s", args, errs)
			}
			mu.Lock()
			ops[kind]++
			mu.Unlock()
		}
	}
	for w, kind := range []string{"create", "create", "rm", "rm", "ls"} {
		wg.Add(1)
		go worker(kind, w)
	}
	wg.Wait()
	t.Logf("operations: %v", ops)
	rt := e.runtime()
	e.assertConsistent(rt)
	list, err := rt.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, b := range list {
		if seen[b.Name] {
			t.Fatalf("two boxes named %s", b.Name)
		}
		seen[b.Name] = true
	}
}

package core_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// The README's "Embedding" section shows this function's body; a test
// keeps the two the same. It needs boxctl, its plugins and the guest
// kernel installed, so it is compiled, not run.
func Example() {
	ctx := context.Background()
	// The boxctl binary runs each box's monitor; plugins are looked for
	// next to it. Without the option it is looked for next to this program,
	// then on $PATH.
	rt, err := core.Open(ctx, core.WithMonitorBinary("/usr/local/bin/boxctl"))
	if err != nil {
		log.Fatal(err)
	}
	defer rt.Close() // stops the boxes this process started
	box, err := rt.Create(ctx, core.BoxOptions{Name: "task", Config: model.BoxConfig{Image: "alpine"}})
	if err != nil {
		log.Fatal(err)
	}
	res, err := rt.Exec(ctx, box.ID(), core.ExecOptions{Argv: []string{"echo", "hi"}, Stdout: os.Stdout})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit code", res.ExitCode)
}

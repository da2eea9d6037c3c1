// Command boxctl-agent is the init (PID 1) of every boxctl VM: it mounts the box root and
// serves the boxctl.agent.v1 gRPC API to the host. It is built statically (CGO_ENABLED=0)
// and packed into the guest initramfs as /init by guest/build.sh.
package main

import "github.com/boxctl/boxctl/guest/agent"

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { agent.Main(version) }

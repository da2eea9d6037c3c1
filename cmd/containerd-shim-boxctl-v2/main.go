// Command containerd-shim-boxctl-v2 is boxctl's containerd runtime shim
// (runtime type io.containerd.boxctl.v2): containerd runs it for each
// container of that runtime, and each container runs in its own box. See
// docs/kubernetes.md.
package main

import "github.com/boxctl/boxctl/runtime/containerd"

var version = "dev"

func main() {
	containerd.Main(containerd.Options{Version: version})
}

// Package sdk is what a boxctl plugin author imports.
//
// A plugin implements one or more of the role interfaces (VMM, DiskBackend,
// SnapshotBackend, ImageSource) and hands them to Serve from its main:
//
//	func main() {
//		sdk.Serve(sdk.ServeConfig{VMM: &myVMM{}})
//	}
//
// The plugin runs as its own process; boxctl talks to it over gRPC through
// hashicorp/go-plugin (protocol in sdk/proto/v1). Serve ties the process to
// the boxctl process that started it: when that one dies, however it dies,
// the plugin removes its socket and exits. The same interfaces are
// what the core consumes: the gRPC client adapters in this package implement
// them, so an implementation can be tested in-process with the real gRPC
// client/server pair from package sdk/sdktest.
package sdk

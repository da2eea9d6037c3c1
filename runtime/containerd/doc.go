// Package containerd is boxctl's containerd runtime shim (runtime type
// io.containerd.boxctl.v2): it owns the mapping from containerd's task API
// (both generations, task v2 and v3, on one socket) onto boxes of package
// core. Each container is one box; the container's init process is the
// command run in it over the guest agent, with its stdio on containerd's
// FIFOs.
//
// A shim process serves one container. Its boxes are labelled with the
// containerd namespace and container ID (LabelNamespace, LabelID), run
// detached from the shim, and are found again by those labels by any later
// shim process for the same container (containerd's `shim delete` after a
// shim died, for one).
package containerd

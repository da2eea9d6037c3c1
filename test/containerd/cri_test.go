package containerd

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/boxctl/boxctl/test/images/busybox"
)

// TestCRIPodSandbox runs a pod (its sandbox and one container) through
// containerd 1.6's CRI plugin with the boxctl runtime handler, as the
// kubelet would: the sandbox is a box, the container another.
func TestCRIPodSandbox(t *testing.T) {
	if _, err := os.Stat("/usr/bin/containerd"); err != nil {
		t.Fatalf("/usr/bin/containerd missing: install Debian's containerd package (scripts/install-deps.sh does)")
	}
	// The boxctl config comes from the runtime's options (containerd's
	// environment names no home): the boxes land in d.home only if the
	// shim read them, in the server and in `shim delete` alike.
	d := startDaemonWith(t, "/usr/bin", false, func(dir string) string {
		boxctlCfg := filepath.Join(dir, "boxctl.hcl")
		if err := os.WriteFile(boxctlCfg, []byte("home = \""+filepath.Join(dir, "h")+"\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return `
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/busybox:pause"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "boxctl"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.boxctl]
    runtime_type = "io.containerd.boxctl.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.boxctl.options]
      ConfigPath = "` + boxctlCfg + `"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "` + filepath.Join(dir, "cni", "bin") + `"
    conf_dir = "` + filepath.Join(dir, "cni", "conf") + `"
`
	})
	// The pod's sandbox image: busybox that sleeps, in place of "pause".
	d.importBusybox("pause", &busybox.Config{Cmd: []string{"sleep", "1000000"}}, "-n", "k8s.io")
	d.importBusybox("latest", nil, "-n", "k8s.io")

	conn, err := grpc.NewClient("unix://"+d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rs := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := rs.Version(ctx, &cri.VersionRequest{}); err != nil {
		t.Fatalf("CRI Version: %v%s", err, d.logTail())
	}
	logDir := filepath.Join(d.dir, "pod-logs")
	podCfg := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: "sandboxed", Uid: "uid-1", Namespace: "default"},
		Hostname:     "sandboxed",
		LogDirectory: logDir,
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
			// Host network: no CNI here. The box has its own network anyway.
			NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE},
		}},
	}
	pod, err := rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: "boxctl"})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v%s", err, d.logTail())
	}
	if ls := d.boxctl("ls", "--format", "{{index .Config.Labels \"containerd.namespace\"}}"); !strings.Contains(ls, "k8s.io") {
		t.Errorf("boxctl ls: want the sandbox's box in namespace k8s.io, got %q", ls)
	}
	ctr, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{
		PodSandboxId: pod.PodSandboxId,
		Config: &cri.ContainerConfig{
			Metadata: &cri.ContainerMetadata{Name: "app"},
			Image:    &cri.ImageSpec{Image: "docker.io/library/busybox:latest"},
			Command:  []string{"sh", "-c", "uname -r; hostname; exit 5"},
			LogPath:  "app.log",
		},
		SandboxConfig: podCfg,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v%s", err, d.logTail())
	}
	if _, err := rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v%s", err, d.logTail())
	}
	var st *cri.ContainerStatus
	for {
		resp, err := rs.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: ctr.ContainerId})
		if err != nil {
			t.Fatalf("ContainerStatus: %v", err)
		}
		if st = resp.Status; st.State == cri.ContainerState_CONTAINER_EXITED {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("container did not exit: %v%s", st, d.logTail())
		case <-time.After(300 * time.Millisecond):
		}
	}
	logData, _ := os.ReadFile(filepath.Join(logDir, "app.log"))
	if st.ExitCode != 5 || !strings.Contains(string(logData), "stdout F "+guestKernelRelease(t, d.guest)) || !strings.Contains(string(logData), "stdout F sandboxed\n") {
		t.Fatalf("container exit %d, log %q: want 5, the guest kernel and the pod's hostname in the CRI log%s", st.ExitCode, logData, d.logTail())
	}
	if _, err := rs.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if _, err := rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: pod.PodSandboxId}); err != nil {
		t.Fatalf("StopPodSandbox: %v%s", err, d.logTail())
	}
	if _, err := rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: pod.PodSandboxId}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	d.checkNothingLeft(t)
}

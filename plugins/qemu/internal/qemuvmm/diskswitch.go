package qemuvmm

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/boxctl/boxctl/internal/proc"
	"github.com/boxctl/boxctl/plugins/qemu/internal/qmp"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// SwitchDisk makes the paused VM's disk at index continue on disk.Path, over
// QMP: the plugin opens the new overlay itself (QEMU may run as a user that
// cannot) and hands QEMU the descriptor in an fd set of its own (add-fd with
// SCM_RIGHTS), adds it as a qcow2 node without a backing file (so QEMU never
// opens the name in its header), and makes it the disk's top with
// blockdev-snapshot, which puts the node the disk had on top so far below it
// as its backing node and reopens that one read-only. QEMU keeps the
// overlay's header as it is: its backing-file name stays what the storage
// plugin wrote.
//
// Node names: a disk's top is named after its device (vdb) until its first
// switch, then vdb-t1, vdb-t2, ...; each format node's file node is its name
// with "-f". The new overlay's descriptor stays in its fd set while the VM
// runs, as the launcher's do: that is how a later switch finds which file a
// node has open (QEMU's own copy of the descriptor is not listed).
//
// A disk already on disk.Path (the file under its top node is that file)
// is left as it is: a retry after a failure whose outcome the caller could
// not see succeeds. A plugin that died half-way leaves at most an unattached
// node, which the next attempt removes, and a descriptor in an fd set of its
// own until QEMU exits.
//
// It takes eight QMP round trips, none of which lists every node with its
// chain (query-named-block-nodes does): a box with many snapshots has a
// long chain.
func (v *VMM) SwitchDisk(ctx context.Context, vm sdk.VM, index int, disk sdk.DiskSpec) error {
	started := time.Now()
	h, err := decodeHandle(vm.Handle)
	if err != nil {
		return err
	}
	dev, err := guestboot.DeviceName(index)
	if err != nil {
		return fmt.Errorf("SwitchDisk index %d: %w: %w", index, err, sdk.ErrInvalidArgument)
	}
	// The new overlay first: a file that cannot be the disk's top is
	// refused before the VM is asked anything.
	f, err := openDisk(fdSpec{Kind: fdDiskRW, Path: disk.Path, Format: "qcow2"})
	if err != nil {
		return fmt.Errorf("SwitchDisk disk.Path: %w: %w", err, sdk.ErrInvalidArgument)
	}
	defer f.Close()
	size, err := qcow2Size(f)
	if err != nil {
		return fmt.Errorf("SwitchDisk disk.Path %s: %w: %w", disk.Path, err, sdk.ErrInvalidArgument)
	}
	q, err := qmp.Dial(ctx, h.QMP)
	if err != nil {
		if gone(vm.PID) {
			return fmt.Errorf("the VM is not running: %w", sdk.ErrInvalidState)
		}
		return err
	}
	defer q.Close()
	if err := requirePaused(ctx, q, "SwitchDisk", "the guest's writes in flight would straddle the switch"); err != nil {
		return err
	}
	top, err := diskTop(ctx, q, dev)
	if err != nil {
		return fmt.Errorf("SwitchDisk index %d: %w", index, err)
	}
	files, err := topFiles(ctx, q, vm, h, dev, top)
	if err != nil {
		return err
	}
	overlay, err := f.Stat()
	if err != nil {
		return err
	}
	if slices.ContainsFunc(files, func(fi os.FileInfo) bool { return os.SameFile(fi, overlay) }) {
		// Switched already: a retry after a failure whose outcome the
		// caller could not see (or nothing was renamed at all).
		v.log.Debug("disk already on its overlay", "device", dev, "node", top.node, "overlay", disk.Path)
		return nil
	}
	old := disk.BackingChain[0]
	switch {
	case top.size != size:
		return fmt.Errorf("SwitchDisk disk.Path %s: its virtual size is %d bytes, but the VM's disk %s has %d: give an overlay of the disk's size: %w", disk.Path, size, dev, top.size, sdk.ErrInvalidArgument)
	case old.Format != top.format:
		return fmt.Errorf("SwitchDisk disk.BackingChain[0] (%s): format %q, but the file the VM's disk %s has open is %s: %w", old.Path, old.Format, dev, top.format, sdk.ErrInvalidArgument)
	}
	oldFile, err := os.Stat(old.Path)
	if err != nil {
		return fmt.Errorf("SwitchDisk disk.BackingChain[0]: %w: %w", err, sdk.ErrInvalidArgument)
	}
	if !slices.ContainsFunc(files, func(fi os.FileInfo) bool { return os.SameFile(fi, oldFile) }) {
		return fmt.Errorf("SwitchDisk disk.BackingChain[0] %s is not the file the VM's disk %s has open: give the file the storage plugin renamed the disk's file to: %w", old.Path, dev, sdk.ErrInvalidArgument)
	}

	node := fmt.Sprintf("%s-t%d", dev, switchNumber(dev, top.node)+1)
	raw, err := q.ExecuteWithFile(ctx, "add-fd", map[string]any{"opaque": "boxctl " + disk.Path}, f)
	if err != nil {
		return fmt.Errorf("pass the new overlay %s to QEMU: %w", disk.Path, err)
	}
	var fdset struct {
		ID int `json:"fdset-id"`
	}
	if err := json.Unmarshal(raw, &fdset); err != nil {
		return fmt.Errorf("add-fd: bad answer %s: %w", raw, err)
	}
	// On failure the VM must go on as it was: drop whatever was added, even
	// when ctx is what failed.
	later, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	del := func(nodes ...string) {
		for _, n := range nodes {
			if _, err := q.Execute(later, "blockdev-del", map[string]any{"node-name": n}); err != nil {
				v.log.Debug("SwitchDisk: remove a block node", "node", n, "err", err)
			}
		}
	}
	undo := func(nodes ...string) {
		del(nodes...)
		// QEMU closes the descriptor once the VM runs again.
		if _, err := q.Execute(later, "remove-fd", map[string]any{"fdset-id": fdset.ID}); err != nil {
			v.log.Warn("SwitchDisk: drop the new overlay's fd set after a failure", "fdset", fdset.ID, "err", err)
		}
	}
	var added []string // nodes to delete on failure, newest first
	for _, n := range blockNodes(node, "/dev/fdset/"+strconv.Itoa(fdset.ID), "qcow2", true, diskCache(true), "") {
		_, err := q.Execute(ctx, "blockdev-add", n)
		if err != nil && len(added) == 0 {
			// A switch whose plugin died half-way may have left nodes of
			// this name, not attached to anything: remove them and retry.
			del(node, node+"-f")
			_, err = q.Execute(ctx, "blockdev-add", n)
		}
		if err != nil {
			undo(added...)
			return fmt.Errorf("open the new overlay %s in QEMU: %w", disk.Path, err)
		}
		added = append([]string{n["node-name"].(string)}, added...)
	}
	_, err = q.Execute(ctx, "blockdev-snapshot", map[string]any{"node": top.node, "overlay": node})
	var refused *qmp.Error
	switch {
	case err == nil:
	case errors.As(err, &refused):
		undo(added...)
		return fmt.Errorf("put the new overlay %s on top of disk %s: %w", disk.Path, dev, err)
	default:
		// No answer (ctx ended, the connection broke): QEMU may have done
		// it. Find out, so as not to take away a node the disk uses.
		now, qerr := diskTop(later, q, dev)
		switch {
		case qerr == nil && now.node == node:
			v.log.Debug("disk switched, though the answer was lost", "device", dev, "to", node, "err", err)
			return nil
		case qerr == nil && now.node == top.node:
			undo(added...)
		}
		return fmt.Errorf("put the new overlay %s on top of disk %s: %w", disk.Path, dev, err)
	}
	v.log.Debug("disk switched", "device", dev, "from", top.node, "to", node, "overlay", disk.Path, "took", time.Since(started))
	return nil
}

// requirePaused refuses op on a VM whose vCPUs run, saying why it must not.
func requirePaused(ctx context.Context, q *qmp.Conn, op, why string) error {
	raw, err := q.Execute(ctx, "query-status", nil)
	if err != nil {
		return err
	}
	var st struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("query-status: bad answer %s: %w", raw, err)
	}
	if st.Running {
		return fmt.Errorf("%s: the VM is %s: pause it first (%s): %w", op, st.Status, why, sdk.ErrInvalidState)
	}
	return nil
}

// top is a disk's top node as QEMU reports it.
type top struct {
	node   string
	format string
	size   uint64
	// file is the name of the file under the node ("/dev/fdset/N"), when
	// QEMU's description of the node shows it.
	file string
}

// diskTop finds the top node of device dev among QEMU's block devices: dev
// itself until the disk was first switched, dev-tN after.
func diskTop(ctx context.Context, q *qmp.Conn, dev string) (top, error) {
	raw, err := q.Execute(ctx, "query-block", nil)
	if err != nil {
		return top{}, err
	}
	var devices []struct {
		Inserted *struct {
			Node  string `json:"node-name"`
			RO    bool   `json:"ro"`
			File  string `json:"file"`
			Image struct {
				Format string `json:"format"`
				Size   uint64 `json:"virtual-size"`
			} `json:"image"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(raw, &devices); err != nil {
		return top{}, fmt.Errorf("query-block: bad answer: %w", err)
	}
	for _, d := range devices {
		in := d.Inserted
		if in == nil || switchNumber(dev, in.Node) < 0 {
			continue
		}
		if in.RO {
			return top{}, fmt.Errorf("the VM's disk %s is read-only: only a writable disk is switched: %w", dev, sdk.ErrInvalidArgument)
		}
		return top{node: in.Node, format: in.Image.Format, size: in.Image.Size, file: fileOfNode(in.File)}, nil
	}
	return top{}, fmt.Errorf("the VM has no disk %s: %w", dev, sdk.ErrInvalidArgument)
}

// fileOfNode reads the file under a format node from the node's filename
// as QEMU describes it: the file's own name for a node that adds nothing
// to it (raw), or a "json:" description whose "file" is the file node's
// (a qcow2 node with its backing given explicitly).
func fileOfNode(filename string) string {
	rest, ok := strings.CutPrefix(filename, "json:")
	if !ok {
		return filename
	}
	var desc struct {
		File struct {
			Filename string `json:"filename"`
		} `json:"file"`
	}
	if json.Unmarshal([]byte(rest), &desc) != nil {
		return ""
	}
	return desc.File.Filename
}

// switchNumber is n for dev's top node named dev-tN, 0 for dev itself, and
// -1 for any other node.
func switchNumber(dev, node string) int {
	if node == dev {
		return 0
	}
	s, ok := strings.CutPrefix(node, dev+"-t")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || strconv.Itoa(n) != s {
		return -1
	}
	return n
}

// fileNode returns the filename of the block node named node.
func fileNode(ctx context.Context, q *qmp.Conn, node string) (string, error) {
	raw, err := q.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true})
	if err != nil {
		return "", err
	}
	var nodes []struct {
		Name string `json:"node-name"`
		File string `json:"file"`
	}
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return "", fmt.Errorf("query-named-block-nodes: bad answer: %w", err)
	}
	for _, n := range nodes {
		if n.Name == node {
			return n.File, nil
		}
	}
	return "", fmt.Errorf("QEMU has no block node %s", node)
}

// topFiles returns the files under top, the top node of dev, as QEMU has
// them open: QEMU names the file by its fd set, the set's descriptors are
// QEMU's, and /proc shows which file each is. That is how SwitchDisk knows
// that the file the storage plugin renamed is the one the VM writes (or the
// switch would freeze one file and leave the VM's writes in another), and
// whether the disk is on the new overlay already.
func topFiles(ctx context.Context, q *qmp.Conn, vm sdk.VM, h handle, dev string, top top) ([]os.FileInfo, error) {
	file := top.file
	if !strings.HasPrefix(file, "/dev/fdset/") {
		// Ask for the file node itself: a longer answer (every node with
		// its whole chain), but no guessing.
		var err error
		if file, err = fileNode(ctx, q, top.node+"-f"); err != nil {
			return nil, err
		}
	}
	set, err := strconv.Atoi(strings.TrimPrefix(file, "/dev/fdset/"))
	if err != nil {
		return nil, fmt.Errorf("SwitchDisk: cannot tell which file the VM's disk %s has open: its node %s is on %q, not on an fd set", dev, top.node, file)
	}
	raw, err := q.Execute(ctx, "query-fdsets", nil)
	if err != nil {
		return nil, err
	}
	var sets []struct {
		ID  int `json:"fdset-id"`
		FDs []struct {
			FD int `json:"fd"`
		} `json:"fds"`
	}
	if err := json.Unmarshal(raw, &sets); err != nil {
		return nil, fmt.Errorf("query-fdsets: bad answer: %w", err)
	}
	pid, err := qemuPID(vm, h)
	if err != nil {
		return nil, err
	}
	var files []os.FileInfo
	for _, s := range sets {
		if s.ID != set {
			continue
		}
		for _, fd := range s.FDs {
			st, err := os.Stat(fmt.Sprintf("/proc/%d/fd/%d", pid, fd.FD))
			if err != nil {
				return nil, fmt.Errorf("SwitchDisk: which file the VM's disk %s has open: %w", dev, err)
			}
			files = append(files, st)
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("SwitchDisk: cannot tell which file the VM's disk %s has open: QEMU lists no descriptor in its fd set %d", dev, set)
	}
	return files, nil
}

// qemuPID is the PID of the VM's QEMU: the launcher writes it (QEMU itself
// may run unprivileged and is not trusted to), and it counts only while it
// is the launcher's child.
func qemuPID(vm sdk.VM, h handle) (int, error) {
	b, err := os.ReadFile(h.QEMUPIDFile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("the VM's QEMU is not running (no %s): %w", h.QEMUPIDFile, sdk.ErrInvalidState)
		}
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: bad PID %q", h.QEMUPIDFile, b)
	}
	if vm.PID > 0 && proc.ParentOf(pid) != vm.PID {
		return 0, fmt.Errorf("process %d of %s is not the VM's QEMU (not a child of its launcher %d): %w", pid, h.QEMUPIDFile, vm.PID, sdk.ErrInvalidState)
	}
	return pid, nil
}

// qcow2Size reads the virtual size from a qcow2 header (checkQcow2 has
// checked the magic).
func qcow2Size(f *os.File) (uint64, error) {
	var b [8]byte
	if _, err := f.ReadAt(b[:], 24); err != nil {
		return 0, fmt.Errorf("read the qcow2 header: %w", err)
	}
	return binary.BigEndian.Uint64(b[:]), nil
}

package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeQMP answers a QMP handshake on l, then reads one command with the
// descriptors sent along with it and answers with the fds' inode numbers
// and the command, after an event and an answer to an earlier command.
func fakeQMP(t *testing.T, l *net.UnixListener) {
	t.Helper()
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		w := json.NewEncoder(c)
		_ = w.Encode(map[string]any{"QMP": map[string]any{}})
		r := bufio.NewReader(c)
		if _, err := r.ReadBytes('\n'); err != nil { // qmp_capabilities
			return
		}
		_ = w.Encode(map[string]any{"return": map[string]any{}})
		buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4*4))
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		var inodes []uint64
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			fds, _ := unix.ParseUnixRights(&m)
			for _, fd := range fds {
				var st unix.Stat_t
				if unix.Fstat(fd, &st) == nil {
					inodes = append(inodes, st.Ino)
				}
				unix.Close(fd)
			}
		}
		var req map[string]any
		_ = json.Unmarshal(buf[:n], &req)
		_ = w.Encode(map[string]any{"event": "SOMETHING"})
		// The late answer to a command the client gave up on, then this
		// one's.
		_ = w.Encode(map[string]any{"return": map[string]any{"command": "stale"}, "id": 1})
		_ = w.Encode(map[string]any{"return": map[string]any{"inodes": inodes, "command": req["execute"], "arguments": req["arguments"]}, "id": req["id"]})
	}()
}

func TestExecuteWithFilePassesTheDescriptor(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "q.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fakeQMP(t, l)
	f, err := os.Create(filepath.Join(dir, "disk.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	raw, err := q.ExecuteWithFile(ctx, "add-fd", map[string]any{"opaque": "x"}, f)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Inodes    []uint64       `json:"inodes"`
		Command   string         `json:"command"`
		Arguments map[string]any `json:"arguments"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Inodes) != 1 || got.Inodes[0] != st.Ino || got.Command != "add-fd" || got.Arguments["opaque"] != "x" {
		t.Errorf("QEMU's side got %+v; want the file's inode %d with add-fd {opaque: x}", got, st.Ino)
	}
	// The event that came before the answer is kept; the stale answer is
	// not taken for this command's.
	if ev, err := q.Next(ctx); err != nil || ev.Name != "SOMETHING" {
		t.Errorf("Next: %+v %v", ev, err)
	}
}

func TestExecuteWithFileNeedsAUnixSocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	q := &Conn{c: a, r: bufio.NewReader(a)}
	if _, err := q.ExecuteWithFile(context.Background(), "add-fd", nil, os.Stdin); err == nil {
		t.Error("ExecuteWithFile over a pipe: no error")
	}
}

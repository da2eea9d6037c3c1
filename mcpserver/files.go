package mcpserver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// Encodings of file contents.
const (
	encodingText   = "text"
	encodingBase64 = "base64"
)

// maxCopyBytes is the largest file read_file copies out of a box to
// return part of it; past that the model is told to read it in pieces
// with run_command.
const maxCopyBytes = 64 << 20

// probeTimeout bounds the small commands the file tools run in the box.
const probeTimeout = 30 * time.Second

// checkPath refuses what is not an absolute path in the box.
func checkPath(field, p string) error {
	switch {
	case p == "":
		return fmt.Errorf(`%q is required: an absolute path inside the sandbox, such as /tmp/notes.txt: %w`, field, core.ErrInvalidArgument)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf(`%q contains a NUL byte: %w`, field, core.ErrInvalidArgument)
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf(`%q %q is not an absolute path: paths are resolved inside the sandbox and must start with "/" (for example /root/%s or /tmp/%s): %w`, field, p, p, p, core.ErrInvalidArgument)
	}
	return nil
}

// ReadFileInput is read_file's arguments.
type ReadFileInput struct {
	Sandbox  string `json:"sandbox" jsonschema:"the sandbox's name or ID"`
	Path     string `json:"path" jsonschema:"absolute path of the file inside the sandbox"`
	Encoding string `json:"encoding,omitempty" jsonschema:"'text' (default; a file that is not valid UTF-8 comes back as base64 anyway) or 'base64'"`
	Offset   int64  `json:"offset,omitempty" jsonschema:"byte offset to start reading at (default 0), to read a large file in parts"`
}

// ReadFileOutput is read_file's result.
type ReadFileOutput struct {
	Content   string `json:"content"`
	Encoding  string `json:"encoding" jsonschema:"how content is encoded: text or base64"`
	Size      int64  `json:"size" jsonschema:"the file's size in bytes"`
	Offset    int64  `json:"offset"`
	Truncated bool   `json:"truncated" jsonschema:"the file goes on past what content holds: call again with offset = offset + bytes returned"`
	Note      string `json:"note,omitempty"`
}

func (s *server) readFile(ctx context.Context, _ *mcp.CallToolRequest, in ReadFileInput) (*mcp.CallToolResult, ReadFileOutput, error) {
	if err := checkPath("path", in.Path); err != nil {
		return nil, ReadFileOutput{}, err
	}
	enc, err := checkEncoding(in.Encoding)
	if err != nil {
		return nil, ReadFileOutput{}, err
	}
	if in.Offset < 0 {
		return nil, ReadFileOutput{}, fmt.Errorf(`"offset" %d is negative: %w`, in.Offset, core.ErrInvalidArgument)
	}
	b, err := s.box(ctx, in.Sandbox)
	if err != nil {
		return nil, ReadFileOutput{}, toolError(err)
	}
	p := path.Clean(in.Path)
	if err := s.checkReadable(ctx, b, p); err != nil {
		return nil, ReadFileOutput{}, toolError(err)
	}
	tmp, err := os.MkdirTemp("", "boxctl-mcp-read-")
	if err != nil {
		return nil, ReadFileOutput{}, err
	}
	defer os.RemoveAll(tmp)
	// A symlink is read through: an agent asking for /etc/localtime wants
	// the zone file, not the link.
	if err := s.rt.CopyOut(ctx, b.ID, p, tmp, core.CopyOptions{FollowSymlinks: true}); err != nil {
		return nil, ReadFileOutput{}, toolError(fmt.Errorf("read %s: %w", p, err))
	}
	local := filepath.Join(tmp, path.Base(p))
	if p == "/" {
		local = tmp
	}
	f, err := os.Open(local)
	if err != nil {
		return nil, ReadFileOutput{}, fmt.Errorf("read %s: the copy out of the box holds no file: %w", p, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, ReadFileOutput{}, err
	}
	if st.IsDir() {
		return nil, ReadFileOutput{}, fmt.Errorf("%s is a directory, not a file: use list_files to see what it holds: %w", p, core.ErrInvalidArgument)
	}
	if !st.Mode().IsRegular() {
		return nil, ReadFileOutput{}, fmt.Errorf("%s is not a regular file (%s): %w", p, st.Mode().Type(), core.ErrInvalidArgument)
	}
	if in.Offset > st.Size() {
		return nil, ReadFileOutput{}, fmt.Errorf(`"offset" %d is past the end of %s (%d bytes): %w`, in.Offset, p, st.Size(), core.ErrInvalidArgument)
	}
	data := make([]byte, min(int64(s.limits.FileBytes), st.Size()-in.Offset))
	if _, err := f.ReadAt(data, in.Offset); err != nil && !errors.Is(err, io.EOF) {
		return nil, ReadFileOutput{}, fmt.Errorf("read %s: %w", p, err)
	}
	out := ReadFileOutput{Size: st.Size(), Offset: in.Offset, Truncated: in.Offset+int64(len(data)) < st.Size()}
	out.Content, out.Encoding = encodeContent(data, enc, out.Truncated)
	var notes []string
	if enc == encodingText && out.Encoding == encodingBase64 {
		notes = append(notes, "the file is not UTF-8 text, so content is base64")
	}
	if out.Truncated {
		notes = append(notes, fmt.Sprintf("returned bytes %d-%d of %d (the limit per call is %d); call again with offset %d for more", in.Offset, in.Offset+int64(len(data)), st.Size(), s.limits.FileBytes, in.Offset+int64(len(data))))
	}
	out.Note = strings.Join(notes, "; ")
	return nil, out, nil
}

// checkReadable refuses, before anything is copied, a path that is a
// directory, a special file or too large to copy, where the image has a
// stat program to tell; without one, the copy itself decides.
func (s *server) checkReadable(ctx context.Context, b *model.Box, p string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	stdout := &cappedBuffer{limit: 4096}
	stderr := &cappedBuffer{limit: 4096}
	res, err := s.rt.Exec(ctx, b.ID, core.ExecOptions{Argv: []string{"stat", "-L", "-c", "%F|%s", "--", p}, Stdout: stdout, Stderr: stderr})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		if strings.Contains(stderr.text(), "No such file") {
			return fmt.Errorf("%s: no such file in sandbox %s: %w", p, b.Name, core.ErrNotFound)
		}
		return nil // no stat, or it could not say: let the copy try
	}
	kind, size, ok := strings.Cut(strings.TrimSpace(stdout.text()), "|")
	n, perr := strconv.ParseInt(size, 10, 64)
	if !ok || perr != nil {
		return nil
	}
	switch {
	case kind == "directory":
		return fmt.Errorf("%s is a directory, not a file: use list_files to see what it holds: %w", p, core.ErrInvalidArgument)
	case !strings.Contains(kind, "regular"):
		return fmt.Errorf("%s is a %s, not a regular file: %w", p, kind, core.ErrInvalidArgument)
	case n > maxCopyBytes:
		return fmt.Errorf("%s is %d bytes, more than read_file handles (%d): read parts of it with run_command (head -c, tail -c, grep, or dd with skip= and count=): %w", p, n, maxCopyBytes, core.ErrInvalidArgument)
	}
	return nil
}

func checkEncoding(e string) (string, error) {
	switch e {
	case "", encodingText:
		return encodingText, nil
	case encodingBase64:
		return encodingBase64, nil
	}
	return "", fmt.Errorf(`"encoding" %q: use "text" or "base64": %w`, e, core.ErrInvalidArgument)
}

// encodeContent returns data as text where it is UTF-8 and text was
// asked for, else as base64. A cut through a multi-byte character at the
// end of a truncated read does not count against it.
func encodeContent(data []byte, enc string, truncated bool) (string, string) {
	if enc == encodingText {
		check := data
		if truncated {
			for i := len(check) - 1; i >= 0 && i >= len(check)-utf8.UTFMax; i-- {
				if utf8.RuneStart(check[i]) {
					if !utf8.FullRune(check[i:]) {
						check = check[:i]
					}
					break
				}
			}
		}
		if utf8.Valid(check) {
			return string(data), encodingText
		}
	}
	return base64.StdEncoding.EncodeToString(data), encodingBase64
}

// WriteFileInput is write_file's arguments.
type WriteFileInput struct {
	Sandbox  string `json:"sandbox" jsonschema:"the sandbox's name or ID"`
	Path     string `json:"path" jsonschema:"absolute path of the file inside the sandbox; missing parent directories are created, an existing file is replaced"`
	Content  string `json:"content" jsonschema:"the file's new contents"`
	Encoding string `json:"encoding,omitempty" jsonschema:"how content is encoded: 'text' (default) or 'base64' (for binary files)"`
	Mode     string `json:"mode,omitempty" jsonschema:"permission bits in octal, e.g. 0755 for a script (default 0644)"`
}

// WriteFileOutput is write_file's result.
type WriteFileOutput struct {
	Path  string `json:"path"`
	Bytes int    `json:"bytes" jsonschema:"how many bytes were written"`
}

func (s *server) writeFile(ctx context.Context, _ *mcp.CallToolRequest, in WriteFileInput) (*mcp.CallToolResult, WriteFileOutput, error) {
	if err := checkPath("path", in.Path); err != nil {
		return nil, WriteFileOutput{}, err
	}
	p := path.Clean(in.Path)
	if p == "/" {
		return nil, WriteFileOutput{}, fmt.Errorf(`"path" must name a file, not the root directory: %w`, core.ErrInvalidArgument)
	}
	enc, err := checkEncoding(in.Encoding)
	if err != nil {
		return nil, WriteFileOutput{}, err
	}
	data := []byte(in.Content)
	if enc == encodingBase64 {
		if data, err = base64.StdEncoding.DecodeString(strings.TrimSpace(in.Content)); err != nil {
			return nil, WriteFileOutput{}, fmt.Errorf(`"content" is not valid base64 (standard alphabet, with padding): %v: %w`, err, core.ErrInvalidArgument)
		}
	}
	if len(data) > s.limits.FileBytes {
		return nil, WriteFileOutput{}, fmt.Errorf("the content is %d bytes, more than write_file takes (%d): write it in parts (write pieces, then join them with run_command: cat part1 part2 > file): %w", len(data), s.limits.FileBytes, core.ErrInvalidArgument)
	}
	mode := os.FileMode(0o644)
	if in.Mode != "" {
		m, err := strconv.ParseUint(in.Mode, 8, 32)
		if err != nil || m > 0o7777 {
			return nil, WriteFileOutput{}, fmt.Errorf(`"mode" %q: give permission bits in octal, like 0644 or 0755: %w`, in.Mode, core.ErrInvalidArgument)
		}
		mode = os.FileMode(m)
	}
	b, err := s.box(ctx, in.Sandbox)
	if err != nil {
		return nil, WriteFileOutput{}, toolError(err)
	}
	tmp, err := os.MkdirTemp("", "boxctl-mcp-write-")
	if err != nil {
		return nil, WriteFileOutput{}, err
	}
	defer os.RemoveAll(tmp)
	local := filepath.Join(tmp, path.Base(p))
	if err := os.WriteFile(local, data, 0o600); err != nil {
		return nil, WriteFileOutput{}, err
	}
	// Chmod, not WriteFile's mode: the umask must not change what was asked.
	if err := os.Chmod(local, mode); err != nil {
		return nil, WriteFileOutput{}, err
	}
	if err := s.rt.CopyIn(ctx, b.ID, local, path.Dir(p), core.CopyOptions{}); err != nil {
		return nil, WriteFileOutput{}, toolError(fmt.Errorf("write %s: %w", p, err))
	}
	return nil, WriteFileOutput{Path: p, Bytes: len(data)}, nil
}

// ListFilesInput is list_files's arguments.
type ListFilesInput struct {
	Sandbox string `json:"sandbox" jsonschema:"the sandbox's name or ID"`
	Path    string `json:"path" jsonschema:"absolute path of a directory inside the sandbox (a file lists just that file)"`
}

// FileEntry is one entry of a directory, as ls -la shows it.
type FileEntry struct {
	Name       string `json:"name"`
	Type       string `json:"type" jsonschema:"file, directory, symlink, fifo, socket, char-device, block-device or other"`
	Mode       string `json:"mode" jsonschema:"permissions as ls shows them, e.g. -rw-r--r--"`
	Size       int64  `json:"size"`
	Owner      string `json:"owner"`
	Group      string `json:"group"`
	Modified   string `json:"modified" jsonschema:"last modification time, RFC 3339"`
	LinkTarget string `json:"link_target,omitempty" jsonschema:"where a symlink points"`
}

// ListFilesOutput is list_files's result.
type ListFilesOutput struct {
	Path      string      `json:"path"`
	Entries   []FileEntry `json:"entries"`
	Truncated bool        `json:"truncated" jsonschema:"the directory has more entries than were returned"`
	Note      string      `json:"note,omitempty"`
}

// listScript prints one line per entry of directory $1 (or for $1 itself
// when it is not a directory) with stat's fields, separated by US (\x1f):
// type, mode, size, owner, group, mtime, name, quoted name (with the
// link target for a symlink). It needs sh and stat, which busybox and
// every distribution image have, and runs stat once for the whole
// directory: a process per entry costs seconds under TCG.
const listScript = `p=$1
S=$(printf '\037')
if [ -d "$p" ]; then
  cd -- "$p" || exit 2
  set -- .[!.]* ..?* *
else
  [ -e "$p" ] || [ -L "$p" ] || { echo "no such file or directory" >&2; exit 3; }
  set -- "$p"
fi
# Patterns that match nothing stay as they are; stat skips them.
stat -c "%F$S%A$S%s$S%U$S%G$S%Y$S%n$S%N" -- "$@" 2>/dev/null
rc=$?
[ $rc -ge 126 ] && { echo "stat could not run (exit $rc: the image has no stat, or the directory has too many entries)" >&2; exit 4; }
exit 0`

// maxListEntries bounds one list_files answer.
const maxListEntries = 1000

func (s *server) listFiles(ctx context.Context, _ *mcp.CallToolRequest, in ListFilesInput) (*mcp.CallToolResult, ListFilesOutput, error) {
	if err := checkPath("path", in.Path); err != nil {
		return nil, ListFilesOutput{}, err
	}
	p := path.Clean(in.Path)
	b, err := s.box(ctx, in.Sandbox)
	if err != nil {
		return nil, ListFilesOutput{}, toolError(err)
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	stdout := &cappedBuffer{limit: 1 << 20}
	stderr := &cappedBuffer{limit: 4096}
	res, err := s.rt.Exec(ctx, b.ID, core.ExecOptions{Argv: []string{"/bin/sh", "-c", listScript, "sh", p}, Stdout: stdout, Stderr: stderr})
	if err != nil {
		return nil, ListFilesOutput{}, toolError(err)
	}
	switch res.ExitCode {
	case 0:
	case 3:
		return nil, ListFilesOutput{}, toolError(fmt.Errorf("%s: no such file or directory in sandbox %s: %w", p, b.Name, core.ErrNotFound))
	case 4:
		return nil, ListFilesOutput{}, fmt.Errorf("list %s: %s; use run_command with ls or find instead", p, strings.TrimSpace(stderr.text()))
	case 126, 127:
		return nil, ListFilesOutput{}, fmt.Errorf("list %s: the sandbox's image has no /bin/sh to list files with (%s); use read_file on paths you know, or an image with a shell: %w", p, strings.TrimSpace(stderr.text()), core.ErrUnsupported)
	default:
		return nil, ListFilesOutput{}, fmt.Errorf("list %s: exit %d: %s", p, res.ExitCode, strings.TrimSpace(stderr.text()))
	}
	entries, truncated := parseListing(stdout.text(), maxListEntries)
	out := ListFilesOutput{Path: p, Entries: entries, Truncated: truncated || stdout.truncated()}
	if out.Truncated {
		out.Note = fmt.Sprintf("only the first %d entries are shown; narrow it down with run_command (ls, find)", len(entries))
	}
	return nil, out, nil
}

// parseListing parses listScript's output, at most limit entries.
func parseListing(text string, limit int) ([]FileEntry, bool) {
	entries := []FileEntry{}
	for line := range strings.Lines(text) {
		f := strings.SplitN(strings.TrimSuffix(line, "\n"), "\x1f", 8)
		if len(f) != 8 {
			continue
		}
		if len(entries) == limit {
			return entries, true
		}
		size, _ := strconv.ParseInt(f[2], 10, 64)
		mtime, _ := strconv.ParseInt(f[5], 10, 64)
		e := FileEntry{
			Name: f[6], Type: fileType(f[0]), Mode: f[1], Size: size, Owner: f[3], Group: f[4],
			Modified: time.Unix(mtime, 0).UTC().Format(time.RFC3339),
		}
		if e.Type == "symlink" {
			e.LinkTarget = linkTarget(f[6], f[7])
		}
		entries = append(entries, e)
	}
	return entries, false
}

// linkTarget takes the target out of stat's %N for a symlink,
// "'name' -> 'target'" (busybox and GNU alike for plain names); "" when
// it is quoted some other way.
func linkTarget(name, quoted string) string {
	rest, ok := strings.CutPrefix(quoted, "'"+name+"' -> ")
	if !ok || len(rest) < 2 || rest[0] != '\'' || rest[len(rest)-1] != '\'' {
		return ""
	}
	return rest[1 : len(rest)-1]
}

// fileType maps stat's %F to a short name.
func fileType(f string) string {
	switch f {
	case "regular file", "regular empty file":
		return "file"
	case "directory":
		return "directory"
	case "symbolic link":
		return "symlink"
	case "fifo", "FIFO":
		return "fifo"
	case "socket":
		return "socket"
	case "character special file":
		return "char-device"
	case "block special file":
		return "block-device"
	}
	return "other"
}

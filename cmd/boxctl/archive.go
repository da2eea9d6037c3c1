package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
)

// archiveCommands are export and import of boxes as box archives
// (docs/box-archive.md).
func (a *app) archiveCommands() []*cobra.Command {
	return []*cobra.Command{a.exportCommand(), a.importCommand()}
}

func (a *app) exportCommand() *cobra.Command {
	var opts core.ExportOptions
	c := &cobra.Command{
		Use:   "export [--with-snapshots] [--with-image] BOX FILE|-",
		Short: "Write a stopped box to an archive file",
		Long: `Write a box to one archive file: its configuration, its writable disk
(flattened: the files written in the box), and on request its snapshots
and its image. 'boxctl import' makes a new box from it, here or on another
machine. The archive is compressed (zstd) and every part is checksummed;
docs/box-archive.md describes the format.

The box must be stopped ('boxctl stop BOX' first) and must have run once.
FILE "-" writes to standard output (never to a terminal), for a pipe.
Without --with-image, importing needs the box's image: cached there, or
pullable by the box's image reference as the same digest.`,
		Example: `  boxctl stop web && boxctl export web web.boxar
  boxctl export --with-snapshots --with-image web web-full.boxar
  boxctl export web - | ssh other-host boxctl import - --name web`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, file := args[0], args[1]
			if file == "-" {
				if f, ok := a.stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
					return errors.New("export: refusing to write a box archive to a terminal: redirect standard output to a file or a pipe, or give a FILE")
				}
			}
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			if file == "-" {
				bw := bufio.NewWriterSize(a.stdout, 1<<20)
				if err := rt.Export(cmd.Context(), ref, bw, opts); err != nil {
					return err
				}
				return bw.Flush()
			}
			return writeFileAtomic(file, func(w io.Writer) error { return rt.Export(cmd.Context(), ref, w, opts) })
		},
	}
	c.Flags().BoolVar(&opts.WithSnapshots, "with-snapshots", false, "include every snapshot of the box's disk")
	c.Flags().BoolVar(&opts.WithImage, "with-image", false, "include the box's image, for machines that cannot pull it")
	return c
}

// writeFileAtomic writes path so that a failed or interrupted export
// leaves no partial archive: into an unnamed file (O_TMPFILE) linked into
// place once complete — so not even kill -9 leaves a stray file — or,
// where the filesystem has no unnamed files, a temporary file renamed into
// place.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	dir := filepath.Dir(path)
	tmp, named, err := createUnnamed(dir)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	ok := false
	defer func() {
		tmp.Close()
		if !ok && named != "" {
			os.Remove(named)
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("export: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("export: write %s: %w", path, err)
	}
	if named == "" {
		// Link the unnamed file under a temporary name, then rename it
		// over path (linkat cannot replace an existing file).
		named = filepath.Join(dir, "."+filepath.Base(path)+".tmp-"+strconv.Itoa(os.Getpid()))
		fdPath := "/proc/self/fd/" + strconv.Itoa(int(tmp.Fd()))
		if err := unix.Linkat(unix.AT_FDCWD, fdPath, unix.AT_FDCWD, named, unix.AT_SYMLINK_FOLLOW); err != nil {
			named = ""
			return fmt.Errorf("export: write %s: %w", path, err)
		}
	}
	if err := os.Rename(named, path); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	ok = true
	return nil
}

// createUnnamed opens a new file in dir for writing: unnamed when the
// filesystem allows (named is ""), else a temporary file named named.
func createUnnamed(dir string) (f *os.File, named string, err error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "(unnamed)")), "", nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, "", &os.PathError{Op: "create a file in", Path: dir, Err: err}
	}
	f, err = os.CreateTemp(dir, ".boxctl-export-*.tmp")
	if err != nil {
		return nil, "", err
	}
	return f, f.Name(), nil
}

func (a *app) importCommand() *cobra.Command {
	var name, maxDisk string
	c := &cobra.Command{
		Use:   "import [--name NAME] FILE|-",
		Short: "Make a new box from an archive file",
		Long: `Make a new box from an archive written by 'boxctl export'. The box gets a
new ID, the archived configuration, disk and snapshots, and starts out
stopped: 'boxctl start NAME'. It keeps the archived name unless --name
gives another; a name in use is refused before anything is read.

The archive is treated as untrusted: every part is checked (names, sizes,
checksums, the disks' qcow2 structure: no backing files, no external data)
before the box is created, and a refused import says what was wrong and
leaves nothing behind. The image comes from the archive (export
--with-image), else from the image cache, else it is pulled by its
reference, which must give the archived digest.

FILE "-" reads standard input. Prints the new box's ID (and its name on
standard error).`,
		Example: `  boxctl import web.boxar
  boxctl import web.boxar --name web-copy
  ssh build-host boxctl export web - | boxctl import - --name web`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := core.ImportOptions{Name: name}
			if maxDisk != "" {
				n, err := config.ParseSize(maxDisk)
				if err != nil || n == 0 {
					return fmt.Errorf("--max-disk-size %q: give a size such as 100GiB", maxDisk)
				}
				opts.MaxDiskSize = int64(n)
			}
			var in io.Reader
			from := args[0]
			if from == "-" {
				in = cmd.InOrStdin()
				if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
					return errors.New("import: refusing to read a box archive from a terminal: redirect standard input from a file or a pipe, or give a FILE")
				}
				from = "standard input"
			} else {
				f, err := os.Open(from)
				if err != nil {
					return fmt.Errorf("import: %w", err)
				}
				defer f.Close()
				if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() && fi.Mode()&os.ModeNamedPipe == 0 {
					return fmt.Errorf("import: %s is not a file (%s)", args[0], fi.Mode().Type())
				}
				in = f
			}
			rt, err := a.runtime(cmd.Context())
			if err != nil {
				return err
			}
			box, err := rt.Import(cmd.Context(), bufio.NewReaderSize(in, 1<<20), opts)
			if err != nil {
				return err
			}
			b, err := box.Info(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, b.ID)
			fmt.Fprintf(a.stderr, "imported box %s (%s) from %s; it is stopped: boxctl start %s\n", b.Name, b.ShortID(), from, b.Name)
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "", "name of the new box (default: the archived box's name)")
	c.Flags().StringVar(&maxDisk, "max-disk-size", "", "refuse archives whose disk or any snapshot is larger than this, uncompressed (default 64GiB)")
	return c
}

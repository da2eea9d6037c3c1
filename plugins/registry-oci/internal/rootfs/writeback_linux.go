package rootfs

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing back a range of f without
// waiting for it. The caller fsyncs the image before committing it; started
// early, the device's work overlaps the CPU-bound conversion and that fsync
// only waits for the tail. It is advisory: the fsync reports any write
// error, so errors here are ignored.
func startWriteback(f *os.File, off, n int64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}

// Package atomicfile replaces small files whole: a reader sees the old
// content or the new, never a part (a VMM launcher's PID and state files,
// read by other processes while it writes them).
package atomicfile

import "os"

// Write replaces path with data: written to path+".tmp", then renamed over
// path. The temporary file is removed when the rename fails.
func Write(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

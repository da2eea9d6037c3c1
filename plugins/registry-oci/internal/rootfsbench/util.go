package main

import "io"

func countBytes(r io.ReadCloser) (int64, error) {
	defer r.Close()
	return io.Copy(io.Discard, r)
}

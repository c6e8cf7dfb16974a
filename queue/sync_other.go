//go:build !linux

package queue

import "os"

// syncCoversCreates: fsync of a file does not cover its directory entry.
const syncCoversCreates = false

// syncData fsyncs each written file (no syncfs(2) outside Linux).
func syncData(_ *os.File, files []string) error {
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

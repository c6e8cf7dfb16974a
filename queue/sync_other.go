//go:build !linux

package queue

import "os"

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

// syncFile makes f (written, not yet closed) durable.
func syncFile(f *os.File) error { return f.Sync() }

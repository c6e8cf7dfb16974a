// Package diskfull is test support: a small filesystem of its own that a
// test fills up, the honest way to make writes fail (tests run as root,
// which ignores permissions). No production package imports it.
package diskfull

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Tmpfs mounts a tmpfs of the given size ("4m") on a temporary directory,
// unmounted at the end of the test, and returns the directory. It skips
// the test without mount permission, unless MTAKIT_INTEGRATION=1.
func Tmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("cannot mount a tmpfs for the disk-full test (needs root and mount permission): %v: %s", err, bytes.TrimSpace(out))
		if os.Getenv("MTAKIT_INTEGRATION") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// Fill writes a file in dir until its filesystem is full and returns its
// path; removing the file frees the space again.
func Fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for range 1 << 20 {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			return p
		}
	}
	t.Fatalf("%s never filled up", dir)
	return ""
}

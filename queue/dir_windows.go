package queue

import (
	"os"

	"golang.org/x/sys/windows"
)

// rename is os.Rename made durable before it returns: Windows cannot
// flush a directory (FlushFileBuffers on one fails with access denied),
// and MOVEFILE_WRITE_THROUGH is its way of making a rename durable.
func rename(from, to string) error {
	f, err := windows.UTF16PtrFromString(from)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	t, err := windows.UTF16PtrFromString(to)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	if err := windows.MoveFileEx(f, t, windows.MOVEFILE_REPLACE_EXISTING|windows.MOVEFILE_WRITE_THROUGH); err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// syncDir does nothing: renames are written through (rename), and NTFS
// journals the rest of a directory's changes.
func syncDir(*os.File) error { return nil }

//go:build linux

package queue

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/mtakit/mtakit/policy"
)

// TestMaildirLinkTmpfile: an O_TMPFILE file is named in new/ by linkat(2)
// of itself (AT_EMPTY_PATH); where the kernel refuses that (ENOENT without
// CAP_DAC_READ_SEARCH before Linux 6.10, EINVAL before 2.6.39, EPERM from a
// security module) the delivery still succeeds through /proc/self/fd, and
// every later one goes that way without asking again; a name taken is
// retried with another; an error of the link itself fails the delivery
// with nothing left behind.
func TestMaildirLinkTmpfile(t *testing.T) {
	want := "Return-Path: <a@example.org>\nDelivered-To: john@example.com\n" + strings.ReplaceAll(testMsg, "\r\n", "\n")
	for _, tc := range []struct {
		name     string
		errs     []error // returned by the AT_EMPTY_PATH link, one per call, then the real one
		calls    int     // AT_EMPTY_PATH links tried for three deliveries
		procLink bool    // the /proc way taken for good
		codes    []int
	}{
		{name: "allowed", calls: 3, codes: []int{250, 250, 250}},
		{name: "refused ENOENT", errs: []error{unix.ENOENT}, calls: 1, procLink: true, codes: []int{250, 250, 250}},
		{name: "refused EINVAL", errs: []error{unix.EINVAL}, calls: 1, procLink: true, codes: []int{250, 250, 250}},
		{name: "refused EPERM", errs: []error{unix.EPERM}, calls: 1, procLink: true, codes: []int{250, 250, 250}},
		{name: "name taken", errs: []error{unix.EEXIST}, calls: 4, codes: []int{250, 250, 250}},
		{name: "link fails", errs: []error{unix.EIO}, calls: 3, codes: []int{451, 250, 250}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			md := newModeMaildir(t, root, false)
			st := md.st()
			var (
				mu    sync.Mutex
				calls int
				errs  = tc.errs
			)
			st.linkEmpty = func(fd int, to string) error {
				mu.Lock()
				calls++
				var err error
				if len(errs) > 0 {
					err, errs = errs[0], errs[1:]
				}
				mu.Unlock()
				if err != nil {
					return err
				}
				return linkAtEmptyPath(fd, to)
			}
			var codes []int
			for range 3 {
				codes = append(codes, md.Deliver(context.Background(), delivery(t, "a@example.org", policy.Route{}, testMsg, "john@example.com"))[0].Code)
			}
			skipIfNoTmpfile(t, md, false)
			if tc.name == "allowed" && st.procLink.Load() {
				t.Skip("this kernel refuses linkat(2) AT_EMPTY_PATH here: the /proc way was measured instead")
			}
			assert.Equal(t, tc.codes, codes)
			assert.Equal(t, tc.calls, calls, "AT_EMPTY_PATH links tried")
			assert.Equal(t, tc.procLink, st.procLink.Load(), "the /proc way taken for good")
			assert.False(t, st.noTmpfile.Load(), "still O_TMPFILE")
			newDir := filepath.Join(root, "john", "new")
			ents := mustReadDir(t, newDir)
			delivered := 0
			for _, c := range codes {
				if c == 250 {
					delivered++
				}
			}
			require.Len(t, ents, delivered, "one file per delivery reported, none for a failed one")
			for _, e := range ents {
				assert.Regexp(t, maildirName, e.Name())
				b, err := os.ReadFile(filepath.Join(newDir, e.Name()))
				require.NoError(t, err)
				assert.Equal(t, want, string(b))
			}
			assert.Empty(t, mustReadDir(t, filepath.Join(root, "john", "tmp")))
		})
	}
}

// TestMaildirUnique: the unique names are the spec's, distinct per
// delivery, and joined to their directory, short or long.
func TestMaildirUnique(t *testing.T) {
	for _, dir := range []string{"/m/new", "/" + strings.Repeat("d", 300) + "/new"} {
		a, b := maildirUnique(dir, 1), maildirUnique(dir, 2)
		assert.NotEqual(t, a, b)
		for _, p := range []string{a, b} {
			assert.Equal(t, dir, filepath.Dir(p))
			assert.Regexp(t, maildirName, filepath.Base(p))
		}
		assert.True(t, strings.HasSuffix(a, "Q1."+maildirHost()), a)
	}
}

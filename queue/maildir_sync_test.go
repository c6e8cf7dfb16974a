package queue

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// maildirModes are the two ways a Maildir delivering on its own writes a
// file: unnamed in new/ (O_TMPFILE, Linux) and in tmp/ then renamed.
var maildirModes = []struct {
	name      string
	noTmpfile bool
}{{"tmpfile", false}, {"rename", true}}

// newModeMaildir returns a Maildir under root writing its files the way of
// mode (the tmpfile way is skipped where the filesystem refuses it).
func newModeMaildir(t *testing.T, root string, noTmpfile bool) *Maildir {
	t.Helper()
	md := &Maildir{Root: root}
	md.st().noTmpfile.Store(noTmpfile)
	return md
}

// skipIfNoTmpfile skips a tmpfile-mode test when the Maildir fell back to
// the rename way (no O_TMPFILE here).
func skipIfNoTmpfile(t *testing.T, md *Maildir, noTmpfile bool) {
	t.Helper()
	if !noTmpfile && md.st().noTmpfile.Load() {
		if runtime.GOOS == "linux" {
			t.Skip("the filesystem of TMPDIR refuses O_TMPFILE")
		}
		t.Skip("O_TMPFILE is Linux's")
	}
}

// TestMaildirModes: both ways deliver the same files (LF, the header
// added, under the spec's names), leave nothing in tmp/, and a message
// for two recipients of one maildir makes two files.
func TestMaildirModes(t *testing.T) {
	for _, mode := range maildirModes {
		t.Run(mode.name, func(t *testing.T) {
			root := t.TempDir()
			md := newModeMaildir(t, root, mode.noTmpfile)
			d := delivery(t, "a@example.org", policy.Route{Target: "box"}, testMsg, "x@example.com", "y@example.com")
			got := md.Deliver(context.Background(), d)
			skipIfNoTmpfile(t, md, mode.noTmpfile)
			require.Len(t, got, 2)
			for _, r := range got {
				assert.Equal(t, 250, r.Code)
			}
			ents, err := os.ReadDir(filepath.Join(root, "box", "new"))
			require.NoError(t, err)
			require.Len(t, ents, 2)
			var bodies []string
			for _, e := range ents {
				assert.Regexp(t, maildirName, e.Name())
				b, err := os.ReadFile(filepath.Join(root, "box", "new", e.Name()))
				require.NoError(t, err)
				bodies = append(bodies, string(b))
				info, err := e.Info()
				require.NoError(t, err)
				assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())
			}
			lf := strings.ReplaceAll(testMsg, "\r\n", "\n")
			assert.ElementsMatch(t, []string{
				"Return-Path: <a@example.org>\nDelivered-To: x@example.com\n" + lf,
				"Return-Path: <a@example.org>\nDelivered-To: y@example.com\n" + lf,
			}, bodies)
			tmp, err := os.ReadDir(filepath.Join(root, "box", "tmp"))
			require.NoError(t, err)
			assert.Empty(t, tmp)
			assert.Equal(t, uint64(2), md.st().dirs.begin(filepath.Join(root, "box", "new")), "one fsync of new/ per delivery made one after the other")
		})
	}
}

// TestMaildirSyncOrder: a delivery makes its file's data durable while
// the file is complete and not yet in new/, then names it in new/, then
// fsyncs new/, and reports it only after that; a failure of either sync is
// a temporary failure, and a failed data sync leaves nothing in new/ nor
// in tmp/.
func TestMaildirSyncOrder(t *testing.T) {
	want := "Return-Path: <a@example.org>\nDelivered-To: john@example.com\n" + strings.ReplaceAll(testMsg, "\r\n", "\n")
	eio := errors.New("injected EIO")
	for _, mode := range maildirModes {
		t.Run(mode.name, func(t *testing.T) {
			root := t.TempDir()
			newDir := filepath.Join(root, "john", "new")
			md := newModeMaildir(t, root, mode.noTmpfile)
			st := md.st()
			var (
				mu        sync.Mutex
				steps     []string
				fileErr   error
				dirErr    error
				returned  bool
				fileNames []string
			)
			inNew := func() int {
				ents, err := os.ReadDir(newDir)
				require.NoError(t, err)
				return len(ents)
			}
			st.syncFile = func(f localFile) error {
				mu.Lock()
				defer mu.Unlock()
				assert.Equal(t, int64(len(want)), localFileSize(t, f), "the file is complete when its data is synced")
				assert.Zero(t, inNew(), "nothing is in new/ before its data is durable")
				assert.False(t, returned)
				steps = append(steps, "file")
				fileNames = append(fileNames, f.Name())
				if err := syncFileData(f); err != nil {
					return err
				}
				return fileErr
			}
			st.syncDir = func(dir string) error {
				mu.Lock()
				defer mu.Unlock()
				assert.Equal(t, newDir, dir)
				ents, err := os.ReadDir(dir)
				require.NoError(t, err)
				if assert.Len(t, ents, 1, "the file is in new/ when new/ is synced") {
					b, err := os.ReadFile(filepath.Join(dir, ents[0].Name()))
					require.NoError(t, err)
					assert.Equal(t, want, string(b))
				}
				assert.False(t, returned)
				steps = append(steps, "dir")
				if err := syncDirPath(dir); err != nil {
					return err
				}
				return dirErr
			}
			deliver := func() int {
				r := md.Deliver(context.Background(), delivery(t, "a@example.org", policy.Route{}, testMsg, "john@example.com"))
				mu.Lock()
				returned = true
				mu.Unlock()
				return r[0].Code
			}
			require.Equal(t, 250, deliver())
			skipIfNoTmpfile(t, md, mode.noTmpfile)
			assert.Equal(t, []string{"file", "dir"}, steps)
			if mode.noTmpfile {
				assert.Equal(t, filepath.Join(root, "john", "tmp"), filepath.Dir(fileNames[0]), "written in tmp/")
			} else {
				assert.Equal(t, newDir, fileNames[0], "an unnamed file of new/")
			}

			// A failed data sync: 451, nothing published, nothing left.
			require.NoError(t, os.Remove(filepath.Join(newDir, mustOnly(t, newDir))))
			steps, returned, fileErr = nil, false, eio
			assert.Equal(t, 451, deliver())
			assert.Equal(t, []string{"file"}, steps, "no rename or link after a failed data sync")
			assert.Zero(t, inNew())
			tmp, err := os.ReadDir(filepath.Join(root, "john", "tmp"))
			require.NoError(t, err)
			assert.Empty(t, tmp, "the file written is gone")

			// A failed directory sync: 451 (the file stays: delivered at
			// least once, never lost).
			steps, returned, fileErr, dirErr = nil, false, nil, eio
			assert.Equal(t, 451, deliver())
			assert.Equal(t, []string{"file", "dir"}, steps)
			assert.Equal(t, 1, inNew())
		})
	}
}

// localFileSize returns the size of f: an *os.File, or a bare descriptor
// (Linux: through /proc/self/fd, which reaches an unnamed file too).
func localFileSize(t *testing.T, f localFile) int64 {
	t.Helper()
	if of, ok := f.(*os.File); ok {
		info, err := of.Stat()
		require.NoError(t, err)
		return info.Size()
	}
	info, err := os.Stat(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	require.NoError(t, err)
	return info.Size()
}

// mustOnly returns the name of the one entry of dir.
func mustOnly(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, ents, 1)
	return ents[0].Name()
}

// TestMaildirGroupsDirSyncs: deliveries into one maildir arriving while
// an fsync of its new/ runs share the next one (group commit), none
// returning before a sync that began after its file got its name; a
// delivery into another maildir does not wait for that round.
func TestMaildirGroupsDirSyncs(t *testing.T) {
	for _, mode := range maildirModes {
		t.Run(mode.name, func(t *testing.T) {
			root := t.TempDir()
			md := newModeMaildir(t, root, mode.noTmpfile)
			st := md.st()
			// Make both maildirs (and learn whether O_TMPFILE works here).
			for _, box := range []string{"john", "jane"} {
				require.Equal(t, 250, md.Deliver(context.Background(), delivery(t, "a@example.org", policy.Route{}, testMsg, box+"@example.com"))[0].Code)
			}
			skipIfNoTmpfile(t, md, mode.noTmpfile)
			johnNew := filepath.Join(root, "john", "new")
			var (
				mu      sync.Mutex
				calls   = map[string]int{}
				first   = true
				started = make(chan struct{})
				release = make(chan struct{})
			)
			st.syncDir = func(dir string) error {
				mu.Lock()
				calls[dir]++
				hold := first && dir == johnNew
				if hold {
					first = false
				}
				mu.Unlock()
				if hold {
					close(started)
					<-release
				}
				return syncDirPath(dir)
			}
			send := func(box string) chan int {
				c := make(chan int, 1)
				go func() {
					c <- md.Deliver(context.Background(), delivery(t, "a@example.org", policy.Route{}, testMsg, box+"@example.com"))[0].Code
				}()
				return c
			}
			firstDone := send("john")
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				t.Fatal("no fsync of new/")
			}
			const n = 16
			var rest []chan int
			for range n {
				rest = append(rest, send("john"))
			}
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				st.dirs.mu.Lock()
				w := st.dirs.m[johnNew].waiting
				st.dirs.mu.Unlock()
				if w == n {
					break
				}
				time.Sleep(time.Millisecond) // waiting for the deliveries to queue up, not timing anything
			}
			st.dirs.mu.Lock()
			assert.Equal(t, n, st.dirs.m[johnNew].waiting, "all wait for the round under way")
			st.dirs.mu.Unlock()
			assert.Equal(t, 250, <-send("jane"), "another maildir's delivery does not wait for john's round")
			for _, c := range rest {
				assert.Empty(t, c, "no delivery returns before its own round")
			}
			close(release)
			assert.Equal(t, 250, <-firstDone)
			for _, c := range rest {
				assert.Equal(t, 250, <-c)
			}
			mu.Lock()
			assert.Equal(t, 2, calls[johnNew], "16 deliveries arriving during one fsync of new/ share one more")
			assert.Equal(t, 1, calls[filepath.Join(root, "jane", "new")])
			mu.Unlock()
			ents, err := os.ReadDir(johnNew)
			require.NoError(t, err)
			assert.Len(t, ents, n+2)
		})
	}
}

// otherStore is a Store that is not a *Spool (as the JetStream store and
// any other are).
type otherStore struct{ *Spool }

// TestSchedulerMaildirOwnSyncs: a Scheduler delivers to a Maildir with the
// Maildir's own syncs (fdatasync and fsync of new/), on a Spool as on any
// other store: no syncfs(2) round of the spool is run for it.
func TestSchedulerMaildirOwnSyncs(t *testing.T) {
	for _, other := range []bool{false, true} {
		t.Run(fmt.Sprintf("other=%v", other), func(t *testing.T) { testSchedulerMaildirOwnSyncs(t, other) })
	}
}

func testSchedulerMaildirOwnSyncs(t *testing.T, other bool) {
	dir := t.TempDir()
	sp, err := Open(filepath.Join(dir, "spool"), SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	md := &Maildir{Root: filepath.Join(dir, "mail")}
	var st Store = sp
	if other {
		st = otherStore{sp}
	}
	sch := NewScheduler(st, Config{
		Transports:   map[string]Transport{"maildir": md},
		DefaultRoute: policy.Route{Transport: "maildir"},
		Logger:       quietLogger(),
	})
	require.Nil(t, sch.syncs, "no spool's rounds joined")
	done := make(chan string, 1)
	sch.afterWork = func(id string) { done <- id }
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { sch.Run(ctx); close(ran) }()
	defer func() { cancel(); <-ran }()
	require.NoError(t, sp.Enqueue(context.Background(), newTx("o1", "a@example.org", "john@example.com"), newMessage(t, testMsg)))
	var rounds uint64
	if syncCoversRenames {
		rounds = sp.syncs.groups.begin(sp.c.key)
	}
	select {
	case id := <-done:
		require.Equal(t, "o1", id)
	case <-time.After(10 * time.Second):
		t.Fatal("not delivered")
	}
	assert.Equal(t, 1, len(mustReadDir(t, filepath.Join(dir, "mail", "john", "new"))))
	assert.Equal(t, uint64(1), md.st().dirs.begin(filepath.Join(dir, "mail", "john", "new")), "new/ fsynced by the Maildir")
	if syncCoversRenames {
		assert.Equal(t, rounds, sp.syncs.groups.begin(sp.c.key), "no round of the spool's syncfs after the enqueue")
	}
}

func mustReadDir(t *testing.T, dir string) []os.DirEntry {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	return ents
}

const maildirCrashEnv = "MTAKIT_MAILDIR_CRASH_CHILD"

// TestMaildirCrashChild is the child of TestMaildirCrash: it delivers
// messages to two maildirs from 8 goroutines and prints the mark of each
// delivery reported, until killed.
func TestMaildirCrashChild(t *testing.T) {
	spec := os.Getenv(maildirCrashEnv)
	if spec == "" {
		t.Skip("child process of TestMaildirCrash only")
	}
	mode, root, _ := strings.Cut(spec, ":")
	md := &Maildir{Root: root}
	md.st().noTmpfile.Store(mode == "rename")
	out := make(chan string, 64)
	for g := range 8 {
		go func() {
			for i := 0; i < 100000; i++ {
				mark := fmt.Sprintf("g%d-%d", g, i)
				raw := testMsg + strings.Repeat("x", 8000) + "\r\nEND " + mark + "\r\n"
				box := []string{"john", "jane"}[i%2]
				r := md.Deliver(context.Background(), delivery(t, "a@example.org", policy.Route{}, raw, box+"@example.com"))
				if r[0].Code != 250 {
					out <- "ERR " + r[0].String()
					return
				}
				if i == 0 && md.st().noTmpfile.Load() {
					out <- "RENAME" // no O_TMPFILE here
				}
				out <- "ACK " + mark
			}
		}()
	}
	w := bufio.NewWriter(os.Stdout)
	for line := range out {
		fmt.Fprintln(w, line)
		w.Flush() // a mark is printed only after Deliver reported it
	}
}

// TestMaildirCrash kills a process delivering to maildirs with SIGKILL:
// every delivery it reported is in new/, whole, and no file in new/ is
// partial. (A kill keeps what the kernel holds; the order of the syncs,
// which a power loss needs, is TestMaildirSyncOrder's.)
func TestMaildirCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	for _, mode := range maildirModes {
		t.Run(mode.name, func(t *testing.T) {
			root := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^TestMaildirCrashChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), maildirCrashEnv+"="+mode.name+":"+root)
			stdout, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			acked := map[string]bool{}
			renamed := mode.noTmpfile
			sc := bufio.NewScanner(stdout)
			deadline := time.Now().Add(20 * time.Second)
			for sc.Scan() {
				line := sc.Text()
				if mark, ok := strings.CutPrefix(line, "ACK "); ok {
					acked[mark] = true
				} else if line == "RENAME" {
					renamed = true
				} else if strings.HasPrefix(line, "ERR") {
					t.Fatalf("child: %s", line)
				}
				if len(acked) >= 300 || time.Now().After(deadline) {
					break
				}
			}
			require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
			for sc.Scan() { // printed before it died: reported too
				if mark, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
					acked[mark] = true
				}
			}
			cmd.Wait()
			require.NotEmpty(t, acked, "the child reported nothing")
			t.Logf("child reported %d deliveries before SIGKILL", len(acked))

			found := map[string]bool{}
			for _, box := range []string{"john", "jane"} {
				for _, e := range mustReadDir(t, filepath.Join(root, box, "new")) {
					b, err := os.ReadFile(filepath.Join(root, box, "new", e.Name()))
					require.NoError(t, err)
					s := string(b)
					i := strings.LastIndex(s, "\nEND ")
					if !assert.True(t, i >= 0 && strings.HasSuffix(s, "\n"), "partial file in new/: %s", e.Name()) {
						continue
					}
					assert.Contains(t, s, strings.Repeat("x", 8000))
					found[strings.TrimSuffix(s[i+len("\nEND "):], "\n")] = true
				}
				if !renamed {
					assert.Empty(t, mustReadDir(t, filepath.Join(root, box, "tmp")), "unnamed files leave nothing in tmp/")
				}
			}
			missing := 0
			for mark := range acked {
				if !found[mark] {
					missing++
				}
			}
			assert.Zero(t, missing, "reported deliveries missing after the kill")
		})
	}
}

// TestMkdirAllSynced: it makes every missing directory of the path (the
// parents of those it made are fsynced), does nothing for one that
// exists, and fails where a file is in the way.
func TestMkdirAllSynced(t *testing.T) {
	root := t.TempDir()
	deep := filepath.Join(root, "a", "b", "c")
	require.NoError(t, mkdirAllSynced(deep, 0o700))
	info, err := os.Stat(deep)
	require.NoError(t, err)
	assert.True(t, info.IsDir())
	require.NoError(t, mkdirAllSynced(deep, 0o700), "exists already")
	require.NoError(t, os.WriteFile(filepath.Join(root, "file"), nil, 0o600))
	assert.Error(t, mkdirAllSynced(filepath.Join(root, "file", "x"), 0o700))
}

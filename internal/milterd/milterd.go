package milterd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// startTimeout bounds a daemon's start-up: rspamd's is about 1.5 s, the
// others' well under one.
const startTimeout = 60 * time.Second

// stopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// Daemon is a milter daemon started by this package for one test.
type Daemon struct {
	// Name is the program: "rspamd", "opendkim" or "clamav-milter".
	Name string
	// Network and Address are where the milter listens, for a dialer:
	// "tcp" and "127.0.0.1:port".
	Network, Address string
	// Dir is the daemon's private directory (configuration, keys,
	// databases, logs); it is removed by Stop.
	Dir string

	cmd      *exec.Cmd
	out      *output
	exited   chan struct{} // closed when the process has exited
	waitErr  error         // set before exited is closed
	stopOnce sync.Once
	extra    []func() // more to stop, after the process (e.g. a clamd)
	// killAtStop: SIGKILL at once. libmilter's daemons (opendkim,
	// clamav-milter) take about 5 s to notice SIGTERM and keep nothing
	// worth a clean exit.
	killAtStop bool
}

// Spec returns the milter's address in the form the doe-family -milter
// flag takes: "inet:127.0.0.1:port".
func (d *Daemon) Spec() string { return "inet:" + d.Address }

// Output returns what the daemon has written to its standard output and
// error so far (its log, for the daemons that log there).
func (d *Daemon) Output() string { return d.out.String() }

// Stop stops the daemon (SIGTERM to its process group, SIGKILL after 10 s)
// and removes its directory. It is registered with t.Cleanup by the
// starting function; calling it earlier is fine, and more than once too.
func (d *Daemon) Stop() {
	d.stopOnce.Do(func() {
		if d.cmd != nil && d.cmd.Process != nil {
			select {
			case <-d.exited:
			default:
				signalGroup(d.cmd.Process, d.killAtStop)
				select {
				case <-d.exited:
				case <-time.After(stopTimeout):
					// The whole group: workers a daemon forked
					// (rspamd's) may outlive a killed parent.
					signalGroup(d.cmd.Process, true)
					<-d.exited
				}
			}
		}
		for _, f := range d.extra {
			f()
		}
		if d.Dir != "" {
			_ = os.RemoveAll(d.Dir)
		}
	})
}

// requireTool returns the path of a daemon's program or skips the test
// (fails it with MTAKIT_INTEGRATION=1).
func requireTool(tb testing.TB, path, pkg string) string {
	tb.Helper()
	p, err := exec.LookPath(path)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("%s not installed (apt-get install -y --no-install-recommends %s): %v", path, pkg, err)
	if os.Getenv("MTAKIT_INTEGRATION") == "1" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
	return ""
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process can take it before the daemon binds it: the starting
// functions then try again on a fresh port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// privateDir makes the daemon's directory under os.TempDir. Not
// t.TempDir: a daemon that drops root privileges must be able to reach it,
// and t.TempDir's parent is private to root.
func privateDir(tb testing.TB, name string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "mtakit-"+name+"-")
	if err != nil {
		tb.Fatal(err)
	}
	return dir
}

// errPortTaken says the daemon could not bind its port: try another.
var errPortTaken = errors.New("port taken")

// start runs try, which starts daemon name on a free port, again on
// another port when the one it got was taken meanwhile (errPortTaken), up
// to three times; the daemon is stopped at the end of the test.
func start(tb testing.TB, name string, try func() (*Daemon, error)) *Daemon {
	tb.Helper()
	var lastErr error
	for range 3 {
		d, err := try()
		if err == nil {
			tb.Cleanup(d.Stop)
			return d
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) {
			break
		}
	}
	tb.Fatalf("starting %s: %v", name, lastErr)
	return nil
}

// start runs argv in its own process group, collecting its output, and
// waits until ready returns nil (or the process exits, or the start-up
// time is over). On failure the caller must call d.Stop (after reading
// what it wants from d.Dir).
func (d *Daemon) start(argv []string, env []string, ready func(ctx context.Context) error) error {
	d.out = &output{changed: make(chan struct{})}
	d.exited = make(chan struct{})
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = d.Dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = d.out
	cmd.Stderr = d.out
	cmd.SysProcAttr = groupAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	d.cmd = cmd
	go func() {
		d.waitErr = cmd.Wait()
		close(d.exited)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	go func() {
		select {
		case <-d.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := ready(ctx)
	if err == nil {
		return nil
	}
	select {
	case <-d.exited:
		err = fmt.Errorf("%s exited during start-up (%v): %w", d.Name, d.waitErr, err)
	default:
	}
	return err
}

// waitAccept returns when a TCP connection to addr succeeds (it is closed
// again at once), or with ctx's error. Each failed attempt is followed by
// a short pause, doubling from 5 ms to 100 ms: the event waited for is the
// socket accepting, which has no other notification.
func waitAccept(ctx context.Context, addr string) error {
	pause := 5 * time.Millisecond
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s did not accept: %w", addr, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not accept: %w", addr, err)
		case <-time.After(pause):
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// waitFileLine returns when the file at path contains sub, or with ctx's
// error; for daemons that log only to a file (clamav-milter refuses a
// pipe), it polls like waitAccept.
func waitFileLine(ctx context.Context, path, sub string) error {
	pause := 5 * time.Millisecond
	for {
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte(sub)) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %q in %s: %w", sub, path, ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// runningAsRoot says whether daemons started now would run as root.
func runningAsRoot() bool { return os.Geteuid() == 0 }

// chownTree gives dir and everything in it to the user and group uid:gid.
func chownTree(dir string, uid, gid int) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// lookupIDs returns the numeric ids of a system user and its group.
func lookupIDs(userName string) (uid, gid int, err error) {
	u, err := user.Lookup(userName)
	if err != nil {
		return 0, 0, err
	}
	if uid, err = strconv.Atoi(u.Uid); err != nil {
		return 0, 0, err
	}
	if gid, err = strconv.Atoi(u.Gid); err != nil {
		return 0, 0, err
	}
	return uid, gid, nil
}

// sourceDir returns this package's source directory, to find the
// repository's test data (delegate/testdata/clamav-env.sh).
func sourceDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// logOnFailure registers a cleanup that prints the tail of the daemon's
// output when the test failed.
func logOnFailure(tb testing.TB, d *Daemon, files ...string) {
	tb.Cleanup(func() {
		if !tb.Failed() {
			return
		}
		tb.Logf("%s output (tail):\n%s", d.Name, tail(d.Output(), 60))
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil {
				tb.Logf("%s (tail):\n%s", f, tail(string(b), 60))
			}
		}
	})
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// output collects a process's output and wakes waiters on every write.
type output struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// waitFor returns the output once one of the substrings has appeared in
// it, or ctx's error.
func (o *output) waitFor(ctx context.Context, subs ...string) (string, error) {
	for {
		o.mu.Lock()
		s, ch := o.buf.String(), o.changed
		o.mu.Unlock()
		for _, sub := range subs {
			if strings.Contains(s, sub) {
				return s, nil
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return s, fmt.Errorf("waiting for %q in the output: %w", subs, ctx.Err())
		}
	}
}

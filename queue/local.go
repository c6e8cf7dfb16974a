package queue

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// MailboxName returns the mailbox a local transport uses for rcpt when the
// route gives no target: the local part, lower-cased, made safe as one path
// element (see SafeMailbox).
func MailboxName(rcpt policy.Address) string { return SafeMailbox(strings.ToLower(rcpt.Local)) }

// SafeMailbox makes name usable as one path element under a root: '/' and
// '\' and control characters become '_', leading dots are dropped, and ""
// becomes "_". The result cannot be "." or "..".
func SafeMailbox(name string) string {
	name = strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r < 0x20 || r == 0x7f {
			return '_'
		}
		return r
	}, name)
	name = strings.TrimLeft(name, ".")
	if name == "" {
		return "_"
	}
	if len(name) > 200 {
		name = name[:200]
	}
	return name
}

// routeMailbox returns the mailbox of a local delivery to rcpt: the route's
// target, or rcpt's MailboxName when it has none, made safe either way.
func routeMailbox(route policy.Route, rcpt policy.Address) string {
	if route.Target == "" {
		return MailboxName(rcpt)
	}
	return SafeMailbox(route.Target)
}

// localHeader returns the Return-Path and Delivered-To fields a local
// delivery prepends.
func localHeader(d *policy.Delivery, rcpt policy.Recipient) string {
	return "Return-Path: " + clean(d.Tx.From.Path()) + "\r\nDelivered-To: " + clean(rcpt.Addr.String()) + "\r\n"
}

var (
	replyDelivered  = policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "Delivered"}
	replyLocalError = policy.Reply{Code: 451, Enhanced: "4.3.0", Text: "Local delivery failed"}
)

// lfWriter writes to w with every CRLF turned into LF, the local
// convention of maildir and mbox files (as Postfix's local delivery does).
type lfWriter struct {
	w  io.Writer
	cr bool // the previous write ended with CR
}

func (l *lfWriter) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) == 0 {
		return 0, nil
	}
	if l.cr {
		l.cr = false
		if p[0] != '\n' {
			if _, err := l.w.Write(crByte); err != nil {
				return 0, err
			}
		}
	}
	// Runs between CRs go through as they are: no copy, no allocation.
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\r')
		if i < 0 {
			break
		}
		if i+1 == len(p) { // a CR at the end: its fate depends on the next write
			l.cr = true
			p = p[:i]
			break
		}
		end, skip := i+1, i+1 // a lone CR stays
		if p[i+1] == '\n' {
			end = i // CRLF: drop the CR
		}
		if _, err := l.w.Write(p[:end]); err != nil {
			return 0, err
		}
		p = p[skip:]
	}
	if len(p) > 0 {
		if _, err := l.w.Write(p); err != nil {
			return 0, err
		}
	}
	return n, nil
}

var crByte = []byte{'\r'}

func (l *lfWriter) flush() error {
	if l.cr {
		l.cr = false
		_, err := l.w.Write(crByte)
		return err
	}
	return nil
}

// Maildir delivers into maildirs under Root: <Root>/<mailbox>/{tmp,new,cur},
// created as needed. The mailbox is Route.Target, or MailboxName of the
// recipient when the target is empty; either way it is made safe with
// SafeMailbox so that no recipient can write outside Root.
//
// Each recipient gets its own file (with its own Delivered-To), named as
// the maildir spec says, and a reader never sees it partial in new/: on
// Linux it is written as an unnamed file of new/ (O_TMPFILE), elsewhere
// (or where the filesystem has no O_TMPFILE) in tmp/. Its data is made
// durable (fdatasync(2), by each delivery for itself, concurrently), then
// it gets its name in new/ (linkat(2), or a rename from tmp/), then new/
// is fsynced once for all the deliveries into it meanwhile (group commit:
// the first one waiting runs the fsync, the others wait for it). Deliver
// reports a delivery only after that fsync. These syncs write nothing of
// other files, so their cost does not grow with other writers on the
// filesystem, as a syncfs(2) of it would.
//
// A Maildir keeps its state (the mailboxes it made, the rounds of its
// directory syncs) in itself, released when it is no longer referenced.
// The fields must not be changed, nor the Maildir copied, once it is in
// use.
type Maildir struct {
	Root string
	// KeepCRLF stores messages with CRLF line ends (default: LF).
	KeepCRLF bool

	state atomic.Pointer[maildirState] // made by the first delivery
}

// maildirState is what a Maildir keeps between deliveries.
type maildirState struct {
	// dirs are the rounds of fsync(2) of each maildir's new/ (the key is
	// its path): one per round covers the names given in it meanwhile.
	dirs syncGroups
	// made remembers the maildirs known to exist (dir -> *maildirPaths),
	// sparing three MkdirAll and the joining of their paths per delivery.
	made sync.Map
	// seq numbers the deliveries in unique names.
	seq atomic.Uint64
	// noTmpfile is set once O_TMPFILE or its linkat(2) was refused: files
	// are written in tmp/ and renamed from then on.
	noTmpfile atomic.Bool
	// procLink is set once linkat(2) of an O_TMPFILE file itself
	// (AT_EMPTY_PATH, see linkTmpfile) was refused: files are linked
	// through /proc/self/fd from then on.
	procLink atomic.Bool
	// linkEmpty is linkAtEmptyPath; tests replace it.
	linkEmpty func(fd int, to string) error
	// syncFile and syncDir make a file's data and a directory's entries
	// durable (syncFileData, syncDirPath); tests replace them.
	syncFile func(localFile) error
	syncDir  func(dir string) error
}

// st returns md's state, made the first time.
func (md *Maildir) st() *maildirState {
	if st := md.state.Load(); st != nil {
		return st
	}
	md.state.CompareAndSwap(nil, &maildirState{syncFile: syncFileData, syncDir: syncDirPath, linkEmpty: linkAtEmptyPath})
	return md.state.Load()
}

// maildirHost is the host part of maildir names, read once (os.Hostname
// costs three system calls).
var maildirHost = sync.OnceValue(func() string {
	host, _ := os.Hostname()
	host = strings.NewReplacer("/", `\057`, ":", `\072`).Replace(host)
	if host == "" {
		host = "localhost"
	}
	return host
})

// maildirPID is the process ID in maildir names (getpid(2) once).
var maildirPID = sync.OnceValue(os.Getpid)

// maildirUnique returns dir/<unique name>, the unique name being
// "<seconds>.M<microseconds>P<pid>Q<seq>.<host>" (one allocation: it is
// built for every delivery).
func maildirUnique(dir string, seq uint64) string {
	now := time.Now()
	host := maildirHost()
	var arr [96]byte
	b := arr[:0]
	if n := len(dir) + 1 + 64 + len(host); n > len(arr) {
		b = make([]byte, 0, n)
	}
	b = append(b, dir...)
	b = append(b, filepath.Separator)
	b = strconv.AppendInt(b, now.Unix(), 10)
	b = append(b, ".M"...)
	b = strconv.AppendInt(b, int64(now.Nanosecond()/1000), 10)
	b = append(b, 'P')
	b = strconv.AppendInt(b, int64(maildirPID()), 10)
	b = append(b, 'Q')
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, '.')
	b = append(b, host...)
	return string(b)
}

// localFile is a file a Maildir delivery writes: an *os.File, or (Linux)
// the bare descriptor of an O_TMPFILE file (tmpFile), which spares the
// *os.File's fcntl(2), allocations and cleanup (measured: 3.6 of the
// 12 us of CPU an open and close of it cost).
type localFile interface {
	io.Writer
	Fd() uintptr
	Name() string
}

// maildirPaths are the directories of one maildir.
type maildirPaths struct{ tmp, new string }

// Deliver implements Transport.
func (md *Maildir) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	return md.deliver(ctx, d, nil)
}

// deliver is Deliver with the deliveries' syncs made in syncfs(2) rounds
// of syncs when it is not nil (see Scheduler.transport), each delivery's
// own fdatasync(2) and a shared fsync(2) of new/ otherwise.
func (md *Maildir) deliver(ctx context.Context, d *policy.Delivery, syncs *fsSyncs) []policy.Reply {
	st := md.st()
	out := make([]policy.Reply, len(d.Rcpts))
	for i, r := range d.Rcpts {
		if err := ctx.Err(); err != nil {
			out[i] = replyLocalError
			continue
		}
		if err := md.deliverOne(st, syncs, routeMailbox(d.Route, r.Addr), d, r); err != nil {
			out[i] = replyLocalError
			continue
		}
		out[i] = replyDelivered
	}
	return out
}

// maildirTries bounds the unique names tried for one file: names can
// collide only between Maildir values delivering into one maildir in the
// same microsecond (each numbers its own deliveries).
const maildirTries = 8

// errNoTmpfile: the kernel or the filesystem has no O_TMPFILE, or its file
// cannot be linked (no /proc).
var errNoTmpfile = errors.New("queue: no O_TMPFILE")

// deliverOne delivers to r in the maildir of mailbox (a SafeMailbox name).
func (md *Maildir) deliverOne(st *maildirState, syncs *fsSyncs, mailbox string, d *policy.Delivery, r policy.Recipient) error {
	var p *maildirPaths
	if v, ok := st.made.Load(mailbox); ok {
		p = v.(*maildirPaths)
	} else {
		dir := filepath.Join(md.Root, mailbox)
		for _, sub := range []string{"tmp", "new", "cur"} {
			if err := mkdirAllSynced(filepath.Join(dir, sub), 0o700); err != nil {
				return err
			}
		}
		p = &maildirPaths{tmp: filepath.Join(dir, "tmp"), new: filepath.Join(dir, "new")}
		st.made.Store(mailbox, p)
	}
	var err error
	if syncs == nil && !st.noTmpfile.Load() {
		if err = md.deliverTmpfile(st, p, d, r); !errors.Is(err, errNoTmpfile) {
			return md.forgetGone(st, mailbox, err)
		}
		st.noTmpfile.Store(true) // and write it again, in tmp/
	}
	return md.forgetGone(st, mailbox, md.deliverRename(st, syncs, p, d, r))
}

// forgetGone returns err, forgetting that the maildir of mailbox exists
// when err says it does not (removed behind our back: made again next
// time).
func (md *Maildir) forgetGone(st *maildirState, mailbox string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		st.made.Delete(mailbox)
	}
	return err
}

// deliverTmpfile delivers into maildir dir with an unnamed file of new/:
// written, fdatasync(2), linked into new/, then new/ fsynced in a round
// shared by the deliveries into it. A failure before the link leaves
// nothing behind (the file goes with its descriptor).
func (md *Maildir) deliverTmpfile(st *maildirState, p *maildirPaths, d *policy.Delivery, r policy.Recipient) error {
	newDir := p.new
	f, err := openTmpfile(newDir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := writeLocal(f, d, r, md.KeepCRLF, nil); err != nil {
		return err
	}
	if err := st.syncFile(f); err != nil {
		return err
	}
	since := st.dirs.begin(newDir)
	for range maildirTries {
		if err = st.linkTmpfile(f, maildirUnique(newDir, st.seq.Add(1))); !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		return err
	}
	return st.dirs.doSince(newDir, since, func() error { return st.syncDir(newDir) })
}

// deliverRename delivers into maildir p the classic way: the file is
// written in tmp/, made durable, renamed into new/, and the rename made
// durable. With syncs (see deliver) both syncs are rounds of syncfs(2) of
// the filesystem; without, the file gets its fdatasync(2) and the rename
// a round of fsync(2) of new/ shared by the deliveries into it.
func (md *Maildir) deliverRename(st *maildirState, syncs *fsSyncs, p *maildirPaths, d *policy.Delivery, r policy.Recipient) error {
	var (
		name, tmp string
		f         *os.File
		err       error
	)
	for range maildirTries {
		tmp = maildirUnique(p.tmp, st.seq.Add(1))
		name = tmp[len(p.tmp)+1:]
		f, err = openFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		return err
	}
	var (
		key   string
		since uint64
	)
	if syncs != nil {
		key, since, err = syncs.begin(f)
	}
	if err == nil {
		err = writeLocal(f, d, r, md.KeepCRLF, nil)
	}
	if err == nil {
		if syncs != nil {
			err = syncs.file(f, key, since)
		} else {
			err = st.syncFile(f)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	newDir := p.new
	var renamed uint64
	if syncs != nil {
		renamed = syncs.groups.begin(key)
	} else {
		renamed = st.dirs.begin(newDir)
	}
	if err == nil {
		err = rename(tmp, newDir+string(filepath.Separator)+name)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if syncs != nil {
		return syncs.renamed(key, newDir, renamed)
	}
	return st.dirs.doSince(newDir, renamed, func() error { return st.syncDir(newDir) })
}

// fsSyncs coalesces concurrent syncs of the same thing (a filesystem, a
// directory): the state of a Spool (which Maildir deliveries join only in
// a benchmark, see Scheduler.syncs). On Linux it also holds one handle per
// filesystem the rounds go through (see key), which close releases.
type fsSyncs struct {
	groups  syncGroups
	handles sync.Map // "fs:<device>" -> *os.File (Linux)

	mu     sync.Mutex // serialises storing handles with close
	closed bool
}

// close closes the handles; syncs needing one fail with errClosed after.
func (y *fsSyncs) close() {
	y.mu.Lock()
	defer y.mu.Unlock()
	y.closed = true
	y.handles.Range(func(k, v any) bool {
		v.(*os.File).Close()
		y.handles.Delete(k)
		return true
	})
}

// syncGroups runs, for each key, at most one sync at a time; a caller
// arriving while one runs waits for the next, which one of the waiters
// runs for them all. A caller returns only after a sync that started after
// it arrived has finished, so its writes are covered.
type syncGroups struct {
	mu sync.Mutex
	m  map[string]*syncGroup
	// committed, when set, is told of each round that carried commits of
	// the spool (doCommit), with their number (SpoolConfig.Events).
	committed func(ops int)
}

type syncGroup struct {
	cond      *sync.Cond
	busy      bool
	started   uint64
	done      uint64
	failed    uint64 // the last round that failed
	failedErr error  // its error
	waiting   int    // callers waiting (tests)
	commits   int    // doCommit callers for the next round to start
}

// group returns the group of key; g.mu is held.
func (g *syncGroups) group(key string) *syncGroup {
	if g.m == nil {
		g.m = map[string]*syncGroup{}
	}
	s := g.m[key]
	if s == nil {
		s = &syncGroup{cond: sync.NewCond(&g.mu)}
		g.m[key] = s
	}
	return s
}

// begin returns the rounds of key done so far; a caller takes it before
// writing what doSince will make durable.
func (g *syncGroups) begin(key string) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.group(key).done
}

// do runs or joins a sync of key; see syncGroups.
func (g *syncGroups) do(key string, fn func() error) error {
	return g.doSince(key, math.MaxUint64, fn)
}

// doSince is do for a caller that began writing after round since: a
// filesystem sync reports a writeback error once per handle, so a round
// that failed after since may have reported this caller's error to others;
// the caller then fails too (errEarlierSync) even if its own round did not.
// It returns once a round of key that started after the call has ended:
// its own, or one it joined.
func (g *syncGroups) doSince(key string, since uint64, fn func() error) error {
	return g.doRound(key, since, false, fn)
}

// doCommit is doSince for a commit of the spool, counted in the round
// that covers it (see committed).
func (g *syncGroups) doCommit(key string, since uint64, fn func() error) error {
	return g.doRound(key, since, true, fn)
}

func (g *syncGroups) doRound(key string, since uint64, commit bool, fn func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.group(key)
	ticket := s.started + 1
	if commit {
		// Every caller arriving now waits for the next round to start
		// (ticket): that round covers it.
		s.commits++
	}
	var err error
	for s.done < ticket {
		if s.busy {
			s.waiting++
			s.cond.Wait()
			s.waiting--
			continue
		}
		s.busy = true
		s.started++
		n, commits := s.started, s.commits
		s.commits = 0
		g.mu.Unlock()
		err = fn()
		if commits > 0 && g.committed != nil {
			g.committed(commits)
		}
		g.mu.Lock()
		s.busy, s.done = false, n
		if err != nil {
			s.failed, s.failedErr = n, err
		}
		s.cond.Broadcast()
	}
	switch {
	case err != nil:
		return err
	case s.failed >= ticket:
		// Joined: rounds ticket..done all covered this caller's writes;
		// a failure of any of them may have been its own.
		return s.failedErr
	case since != math.MaxUint64 && s.failed > since:
		return errEarlierSync
	}
	return nil
}

// mkdirAllSynced is os.MkdirAll that also makes durable the entries it
// creates (the parent of each directory made is fsynced): a message
// delivered into a new maildir or mbox must not lose its directory.
func mkdirAllSynced(dir string, perm os.FileMode) error {
	var missing []string
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		}
		missing = append(missing, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	for _, p := range missing {
		if err := syncDirPath(filepath.Dir(p)); err != nil {
			return err
		}
	}
	return nil
}

// writeLocal writes the local header and the message to f; quote, if not
// nil, filters the message lines (mbox).
func writeLocal(f io.Writer, d *policy.Delivery, r policy.Recipient, crlf bool, wrap func(io.Writer) io.Writer) error {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(f)
	defer func() {
		bw.Reset(nil)
		writerPool.Put(bw)
	}()
	var w io.Writer = bw
	var lf *lfWriter
	if !crlf {
		lf = &lfWriter{w: bw}
		w = lf
	}
	if wrap != nil {
		w = wrap(w) // may have a flush method, called at the end
	}
	if _, err := io.WriteString(w, localHeader(d, r)); err != nil {
		return err
	}
	if _, err := copyMessage(w, d.Message); err != nil {
		return err
	}
	if fl, ok := w.(interface{ flush() error }); ok {
		if err := fl.flush(); err != nil {
			return err
		}
	}
	if lf != nil {
		if err := lf.flush(); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// Mbox appends to mbox files under Root: <Root>/<mailbox>, the mailbox being
// Route.Target or MailboxName of the recipient (made safe as for Maildir).
// Each message starts with a "From sender date" line; body lines matching
// ">*From " get one more '>' (mboxrd); a blank line ends it. The file is
// locked with a <file>.lock dot-lock and flock(2), and fsynced (and its
// directory, when the append created the file or directories); a failed
// append is truncated away.
type Mbox struct {
	Root string
	// LockTimeout bounds the wait for the dot-lock (default 30s); a lock
	// older than 10 minutes is considered stale and removed.
	LockTimeout time.Duration
}

// Deliver implements Transport.
func (mb *Mbox) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	out := make([]policy.Reply, len(d.Rcpts))
	for i, r := range d.Rcpts {
		if err := mb.deliverOne(ctx, filepath.Join(mb.Root, routeMailbox(d.Route, r.Addr)), d, r); err != nil {
			out[i] = replyLocalError
			continue
		}
		out[i] = replyDelivered
	}
	return out
}

func (mb *Mbox) deliverOne(ctx context.Context, path string, d *policy.Delivery, r policy.Recipient) error {
	if err := mkdirAllSynced(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	unlock, err := dotLock(ctx, path+".lock", mb.LockTimeout)
	if err != nil {
		return err
	}
	defer unlock()
	created := true
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		created = false
		f, err = os.OpenFile(path, os.O_RDWR, 0o600)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := lockFile(f, true); err != nil {
		return err
	}
	defer unlockFile(f)
	start, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	err = mb.write(f, d, r)
	if err == nil {
		err = f.Sync()
	}
	if err == nil && created {
		err = syncDirPath(filepath.Dir(path)) // its name, for the first message
	}
	if err != nil {
		f.Truncate(start)
		f.Sync()
	}
	return err
}

func (mb *Mbox) write(f *os.File, d *policy.Delivery, r policy.Recipient) error {
	sender := d.Tx.From.String()
	if sender == "" {
		sender = "MAILER-DAEMON"
	}
	from := "From " + strings.ReplaceAll(clean(sender), " ", "_") + " " + time.Now().UTC().Format(time.ANSIC) + "\n"
	if _, err := io.WriteString(f, from); err != nil {
		return err
	}
	q := &fromQuoter{bol: true}
	if err := writeLocal(f, d, r, false, func(w io.Writer) io.Writer { q.w = w; return q }); err != nil {
		return err
	}
	end := "\n"
	if !q.bol {
		end = "\n\n"
	}
	_, err := io.WriteString(f, end)
	return err
}

// fromQuoter prefixes '>' to lines matching ^>*From (mboxrd quoting).
type fromQuoter struct {
	w   io.Writer
	bol bool   // at the beginning of a line
	pre []byte // the start of a line held back, a prefix of ">*From "
	buf []byte // reused for the output of each Write
}

func (q *fromQuoter) Write(p []byte) (int, error) {
	out := q.buf[:0]
	for _, c := range p {
		if q.bol || len(q.pre) > 0 {
			q.pre = append(q.pre, c)
			q.bol = false
			switch st := quoteState(q.pre); st {
			case 1: // still a prefix of >*From
				continue
			case 2: // matched
				out = append(out, '>')
			}
			out = append(out, q.pre...)
			q.pre = q.pre[:0]
			q.bol = c == '\n'
			continue
		}
		out = append(out, c)
		q.bol = c == '\n'
	}
	q.buf = out
	_, err := q.w.Write(out)
	return len(p), err
}

func (q *fromQuoter) flush() error {
	if len(q.pre) == 0 {
		return nil
	}
	_, err := q.w.Write(q.pre)
	q.pre = q.pre[:0]
	return err
}

// quoteState: 0 no match, 1 partial ">*F", 2 full ">*From ".
func quoteState(b []byte) int {
	i := 0
	for i < len(b) && b[i] == '>' {
		i++
	}
	rest := b[i:]
	const from = "From "
	if len(rest) >= len(from) {
		if string(rest[:len(from)]) == from {
			return 2
		}
		return 0
	}
	if string(rest) == from[:len(rest)] {
		return 1
	}
	return 0
}

// dotLock takes path (a lock file) by exclusive creation, waiting up to
// timeout; a lock older than 10 minutes is removed as stale.
func dotLock(ctx context.Context, path string, timeout time.Duration) (func(), error) {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := 10 * time.Millisecond
	for {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			fmt.Fprintf(f, "%d\n", os.Getpid())
			f.Close()
			return func() { os.Remove(path) }, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, err
		}
		if st, err := os.Stat(path); err == nil && time.Since(st.ModTime()) > 10*time.Minute {
			os.Remove(path)
			continue
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("queue: mbox lock %s: %w", path, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Second)
	}
}

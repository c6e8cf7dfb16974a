package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/admin"
)

const token = "s3cret-t0ken"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fixture is a spool with a running scheduler, served by Listen on a Unix
// socket and on loopback TCP.
type fixture struct {
	t         *testing.T
	sp        *queue.Spool
	srv       *admin.Server
	sock      string
	unix, tcp *http.Client
	base      string // of the TCP listener
	delivered chan string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{t: t, delivered: make(chan string, 100), sock: filepath.Join(dir, "admin.sock")}
	var err error
	f.sp, err = queue.Open(filepath.Join(dir, "spool"), queue.SpoolConfig{Logger: quiet()})
	require.NoError(t, err)
	chain := policy.NewChain()
	chain.PostQ("judge", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if strings.Contains(m.Header.Get("Subject"), "suspect") {
			return policy.Quarantine("judged")
		}
		return policy.Next()
	})
	tr := queue.TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
		out := make([]policy.Reply, len(d.Rcpts))
		for i, r := range d.Rcpts {
			out[i] = policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "ok"}
			if strings.HasPrefix(r.Addr.Local, "slow") {
				out[i] = policy.Reply{Code: 451, Enhanced: "4.4.1", Text: "try later"}
				continue
			}
			f.delivered <- d.Tx.ID + " " + r.Addr.String()
		}
		return out
	})
	sch := queue.NewScheduler(f.sp, queue.Config{Chain: chain, Transports: map[string]queue.Transport{"t": tr},
		DefaultRoute: policy.Route{Transport: "t"}, MinBackoff: time.Hour, Hostname: "mx.test", Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	schedDone := make(chan struct{})
	go func() { sch.Run(ctx); close(schedDone) }()

	f.srv, err = admin.Listen(admin.Config{Queue: f.sp, Socket: f.sock, Addr: "127.0.0.1:0", Token: token, Logger: quiet()})
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- f.srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-served)
		<-schedDone
		f.sp.Close()
	})
	f.base = "http://" + f.srv.Addr().String()
	f.unix = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", f.sock)
	}}}
	f.tcp = &http.Client{}
	return f
}

// enqueue queues a message received age ago.
func (f *fixture) enqueue(id, from, subject string, age time.Duration, rcpts ...string) {
	f.t.Helper()
	tx := policy.NewTransaction(&policy.Conn{Helo: "client.test"}, id)
	tx.Received = time.Now().Add(-age)
	if from != "" {
		tx.From = policy.MustParseAddress(from)
	}
	for _, r := range rcpts {
		tx.Rcpts = append(tx.Rcpts, policy.Recipient{Addr: policy.MustParseAddress(r)})
	}
	raw := "From: <" + from + ">\r\nSubject: " + subject + "\r\n\r\nbody of " + id + "\r\n"
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	require.NoError(f.t, err)
	require.NoError(f.t, f.sp.Enqueue(context.Background(), tx, m))
}

// do sends a request through the Unix socket and decodes the JSON answer
// into out (when not nil); it returns the status.
func (f *fixture) do(method, path string, body any, out any) int {
	f.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(f.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://admin"+path, rd)
	require.NoError(f.t, err)
	resp, err := f.unix.Do(req)
	require.NoError(f.t, err)
	defer resp.Body.Close()
	if out != nil {
		require.NoError(f.t, json.NewDecoder(resp.Body).Decode(out))
	}
	return resp.StatusCode
}

// waitQueue waits until message id is in queue q ("" for gone).
func (f *fixture) waitQueue(id, q string) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		it, err := f.sp.Show(id)
		got := ""
		if err == nil {
			got = it.Queue
		}
		if got == q {
			return
		}
		require.True(f.t, time.Now().Before(deadline), "%s is in %q, want %q", id, got, q)
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *fixture) waitDelivered(want string) {
	f.t.Helper()
	select {
	case got := <-f.delivered:
		require.Equal(f.t, want, got)
	case <-time.After(10 * time.Second):
		f.t.Fatalf("%s never delivered", want)
	}
}

func TestAccessControl(t *testing.T) {
	f := newFixture(t)
	st, err := os.Stat(f.sock)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "only the server's user may connect")

	tests := []struct {
		name   string
		client *http.Client
		url    string
		auth   string
		want   int
	}{
		{"unix socket, no token needed", f.unix, "http://admin/v1/counts", "", http.StatusOK},
		{"tcp without token", f.tcp, f.base + "/v1/counts", "", http.StatusUnauthorized},
		{"tcp with a wrong token", f.tcp, f.base + "/v1/counts", "Bearer nope", http.StatusUnauthorized},
		{"tcp with the token in another scheme", f.tcp, f.base + "/v1/counts", "Basic " + token, http.StatusUnauthorized},
		{"tcp with the token", f.tcp, f.base + "/v1/counts", "Bearer " + token, http.StatusOK},
		{"tcp without token, before routing", f.tcp, f.base + "/v1/nothing", "", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", tt.url, nil)
			require.NoError(t, err)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := tt.client.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			assert.Equal(t, tt.want, resp.StatusCode)
			var body map[string]any
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
			if tt.want == http.StatusUnauthorized {
				assert.Contains(t, body["error"], "token")
				assert.NotContains(t, body, "queues", "nothing leaks without the token")
			} else {
				assert.Contains(t, body, "queues")
			}
		})
	}
}

func TestListenConfig(t *testing.T) {
	sp, err := queue.Open(t.TempDir(), queue.SpoolConfig{Logger: quiet()})
	require.NoError(t, err)
	defer sp.Close()
	dir := t.TempDir()
	notSocket := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(notSocket, nil, 0o600))
	// A socket left by a server that is gone: replaced.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	require.NoError(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	// A socket another server answers on: refused.
	live := filepath.Join(dir, "live.sock")
	ln, err = net.Listen("unix", live)
	require.NoError(t, err)
	defer ln.Close()

	tests := []struct {
		name string
		cfg  admin.Config
		err  string // "" when Listen succeeds
	}{
		{"no queue", admin.Config{Socket: filepath.Join(dir, "a.sock")}, "Queue is required"},
		{"no listener", admin.Config{Queue: sp}, "no listener"},
		{"tcp without token", admin.Config{Queue: sp, Addr: "127.0.0.1:0"}, "needs Config.Token"},
		{"tcp not on loopback", admin.Config{Queue: sp, Addr: "0.0.0.0:0", Token: token}, "not a loopback address"},
		{"tcp by name not on loopback", admin.Config{Queue: sp, Addr: "example.com:8025", Token: token}, "not a loopback address"},
		{"tcp elsewhere when allowed", admin.Config{Queue: sp, Addr: "0.0.0.0:0", Token: token, AllowRemote: true}, ""},
		{"tcp on localhost", admin.Config{Queue: sp, Addr: "localhost:0", Token: token}, ""},
		{"tcp on ::1", admin.Config{Queue: sp, Addr: "[::1]:0", Token: token}, ""},
		{"not a socket", admin.Config{Queue: sp, Socket: notSocket}, "not a socket"},
		{"stale socket", admin.Config{Queue: sp, Socket: stale}, ""},
		{"live socket", admin.Config{Queue: sp, Socket: live}, "another server answers"},
		{"socket path too long", admin.Config{Queue: sp, Socket: filepath.Join(dir, strings.Repeat("x", 100))}, "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := admin.Listen(tt.cfg)
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				return
			}
			if err != nil && strings.Contains(err.Error(), "cannot assign requested address") {
				t.Skip("no such address here:", err)
			}
			require.NoError(t, err)
			require.NoError(t, srv.Close())
			if tt.cfg.Socket != "" {
				_, err := os.Lstat(tt.cfg.Socket)
				assert.ErrorIs(t, err, os.ErrNotExist, "Close removes the socket")
			}
		})
	}
}

func TestListAndShow(t *testing.T) {
	f := newFixture(t)
	f.enqueue("old1", "alice@example.org", "old", 3*time.Hour, "slow1@example.com")
	f.enqueue("new1", "bob@Example.net", "new", time.Minute, "slow2@example.com", "carol@example.com")
	f.enqueue("null1", "", "bounce", 2*time.Hour, "slow3@example.org")
	f.enqueue("sus1", "mallory@example.net", "suspect", time.Hour, "dave@example.com")
	f.waitQueue("old1", queue.Deferred)
	f.waitQueue("new1", queue.Deferred)
	f.waitQueue("null1", queue.Deferred)
	f.waitQueue("sus1", "quarantine/judged")
	f.waitDelivered("new1 carol@example.com")

	tests := []struct {
		query string
		want  []string
	}{
		{"", []string{"old1", "null1", "new1", "sus1"}},
		{"queue=deferred", []string{"old1", "null1", "new1"}},
		{"queue=quarantine/judged", []string{"sus1"}},
		{"queue=quarantine/none", []string{}},
		{"sender=EXAMPLE.NET", []string{"new1", "sus1"}},
		{"sender=%3C%3E", []string{"null1"}},
		{"recipient=slow2", []string{"new1"}},
		{"recipient=carol", []string{"new1"}},
		{"recipient=example.org", []string{"null1"}},
		{"min_age=90m", []string{"old1", "null1"}},
		{"max_age=90m", []string{"new1", "sus1"}},
		{"min_age=30m&max_age=150m&queue=deferred", []string{"null1"}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			var l admin.Listing
			require.Equal(t, http.StatusOK, f.do("GET", "/v1/messages?"+tt.query, nil, &l))
			got := []string{}
			for _, m := range l.Messages {
				got = append(got, m.ID)
			}
			assert.Equal(t, tt.want, got)
			assert.Equal(t, len(tt.want), l.Total)
		})
	}

	t.Run("paging", func(t *testing.T) {
		var seen []string
		next := 0
		for range 3 {
			var l admin.Listing
			require.Equal(t, http.StatusOK, f.do("GET", "/v1/messages?limit=2&offset="+strconv.Itoa(next), nil, &l))
			assert.Equal(t, 4, l.Total)
			for _, m := range l.Messages {
				seen = append(seen, m.ID)
			}
			if next = l.Next; next == 0 {
				break
			}
		}
		assert.Equal(t, []string{"old1", "null1", "new1", "sus1"}, seen)
	})

	t.Run("summary", func(t *testing.T) {
		var l admin.Listing
		f.do("GET", "/v1/messages?recipient=slow2", nil, &l)
		require.Len(t, l.Messages, 1)
		m := l.Messages[0]
		assert.Equal(t, "deferred", m.Queue)
		assert.Equal(t, "bob@example.net", m.From, "the domain as the queue keeps it")
		assert.Equal(t, []string{"slow2@example.com", "carol@example.com"}, m.Rcpts)
		assert.Equal(t, 1, m.Attempts)
		assert.Contains(t, m.LastError, "451 4.4.1 try later")
		assert.False(t, m.NextAttempt.IsZero())
	})

	t.Run("show", func(t *testing.T) {
		var d admin.Detail
		require.Equal(t, http.StatusOK, f.do("GET", "/v1/messages/new1", nil, &d))
		assert.Equal(t, "deferred", d.Queue)
		require.Len(t, d.Envelope.Rcpts, 2)
		assert.Equal(t, queue.RcptPending, d.Envelope.Rcpts[0].State)
		assert.Equal(t, 451, d.Envelope.Rcpts[0].Reply.Code)
		assert.Equal(t, queue.RcptDelivered, d.Envelope.Rcpts[1].State)
		assert.Contains(t, d.Header, "Subject: new")
	})

	t.Run("raw", func(t *testing.T) {
		resp, err := f.unix.Get("http://admin/v1/messages/old1/raw")
		require.NoError(t, err)
		defer resp.Body.Close()
		assert.Equal(t, "message/rfc822", resp.Header.Get("Content-Type"))
		b, _ := io.ReadAll(resp.Body)
		assert.Equal(t, "From: <alice@example.org>\r\nSubject: old\r\n\r\nbody of old1\r\n", string(b))
	})

	t.Run("errors", func(t *testing.T) {
		for _, tt := range []struct {
			method, path string
			want         int
		}{
			{"GET", "/v1/messages/nope", http.StatusNotFound},
			{"GET", "/v1/messages/nope/raw", http.StatusNotFound},
			{"GET", "/v1/messages/a~b", http.StatusBadRequest},
			{"GET", "/v1/messages?queue=nope", http.StatusBadRequest},
			{"GET", "/v1/messages?min_age=yesterday", http.StatusBadRequest},
			{"GET", "/v1/messages?limit=-1", http.StatusBadRequest},
			{"GET", "/v2/anything", http.StatusNotFound},
			{"POST", "/v1/messages/old1/explode", http.StatusNotFound},
			{"POST", "/v1/counts", http.StatusMethodNotAllowed},
		} {
			var e map[string]any
			assert.Equal(t, tt.want, f.do(tt.method, tt.path, nil, &e), "%s %s", tt.method, tt.path)
			assert.NotEmpty(t, e["error"], "%s %s", tt.method, tt.path)
		}
	})
}

func TestActions(t *testing.T) {
	f := newFixture(t)
	f.enqueue("sus1", "mallory@example.net", "suspect", 0, "dave@example.com")
	f.waitQueue("sus1", "quarantine/judged")
	f.enqueue("slow1", "alice@example.org", "later", 0, "slow@example.com")
	f.waitQueue("slow1", queue.Deferred)

	var res admin.Result
	// A quarantined message released is delivered, not judged again.
	require.Equal(t, http.StatusOK, f.do("POST", "/v1/messages/sus1/release", nil, &res))
	assert.Equal(t, admin.Result{ID: "sus1", Action: "release"}, res)
	f.waitDelivered("sus1 dave@example.com")
	f.waitQueue("sus1", "")

	tests := []struct {
		name, method, path string
		status             int
		queue              string // where slow1 is after
	}{
		{"release a deferred message", "POST", "/v1/messages/slow1/release", http.StatusConflict, queue.Deferred},
		{"hold", "POST", "/v1/messages/slow1/hold", http.StatusOK, queue.Hold},
		{"hold twice", "POST", "/v1/messages/slow1/hold", http.StatusConflict, queue.Hold},
		{"requeue a held message", "POST", "/v1/messages/slow1/requeue", http.StatusConflict, queue.Hold},
		{"release from hold", "POST", "/v1/messages/slow1/release", http.StatusOK, queue.Deferred},
		{"requeue", "POST", "/v1/messages/slow1/requeue", http.StatusOK, queue.Deferred},
		{"bounce", "POST", "/v1/messages/slow1/bounce", http.StatusOK, ""},
		{"delete what is gone", "DELETE", "/v1/messages/slow1", http.StatusNotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var res admin.Result
			require.Equal(t, tt.status, f.do(tt.method, tt.path, nil, &res))
			if tt.status != http.StatusOK {
				assert.NotEmpty(t, res.Error)
			}
			f.waitQueue("slow1", tt.queue)
		})
	}
	// The bounce reached the sender, and nothing is left.
	dsnTo(t, f, "alice@example.org")
	var c admin.Counts
	require.Equal(t, http.StatusOK, f.do("GET", "/v1/counts", nil, &c))
	assert.Equal(t, 0, c.Total, "%v", c.Queues)
}

// dsnTo waits for the delivery of a DSN to addr.
func dsnTo(t *testing.T, f *fixture, addr string) {
	t.Helper()
	select {
	case got := <-f.delivered:
		require.True(t, strings.HasSuffix(got, " "+addr), "want the DSN to %s, got %s", addr, got)
	case <-time.After(10 * time.Second):
		t.Fatal("no DSN delivered")
	}
}

func TestBatchAndCounts(t *testing.T) {
	f := newFixture(t)
	for _, id := range []string{"s1", "s2", "s3"} {
		f.enqueue(id, "alice@example.org", "later", 0, "slow@example.com")
		f.waitQueue(id, queue.Deferred)
	}
	f.enqueue("o1", "bob@example.org", "later", 0, "slow@example.net")
	f.waitQueue("o1", queue.Deferred)

	var r admin.Results
	require.Equal(t, http.StatusOK, f.do("POST", "/v1/batch/hold", admin.Batch{IDs: []string{"s1", "nope", "s2"}}, &r))
	require.Len(t, r.Results, 3)
	assert.Equal(t, 1, r.Failed)
	assert.Contains(t, r.Results[1].Error, "no such message")

	var c admin.Counts
	require.Equal(t, http.StatusOK, f.do("GET", "/v1/counts", nil, &c))
	assert.Equal(t, 2, c.Queues[queue.Hold])
	assert.Equal(t, 2, c.Queues[queue.Deferred])
	assert.Equal(t, 4, c.Total)

	// By filter: every message of alice's in hold.
	require.Equal(t, http.StatusOK, f.do("POST", "/v1/batch/delete", admin.Batch{Filter: &admin.Filter{Queue: queue.Hold, Sender: "alice@"}}, &r))
	assert.Len(t, r.Results, 2)
	assert.Equal(t, 0, r.Failed)
	require.Equal(t, http.StatusOK, f.do("GET", "/v1/counts", nil, &c))
	assert.Equal(t, 0, c.Queues[queue.Hold])
	assert.Equal(t, 2, c.Total)

	for _, tt := range []struct {
		name string
		body any
		want int
	}{
		{"neither ids nor filter", admin.Batch{}, http.StatusBadRequest},
		{"both", admin.Batch{IDs: []string{"s3"}, Filter: &admin.Filter{}}, http.StatusBadRequest},
		{"unknown field", map[string]any{"idz": []string{"s3"}}, http.StatusBadRequest},
		{"bad filter", admin.Batch{Filter: &admin.Filter{MaxAge: "soon"}}, http.StatusBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var e map[string]any
			assert.Equal(t, tt.want, f.do("POST", "/v1/batch/delete", tt.body, &e))
			assert.NotEmpty(t, e["error"])
		})
	}
	// An empty filter is every message.
	require.Equal(t, http.StatusOK, f.do("POST", "/v1/batch/delete", admin.Batch{Filter: &admin.Filter{}}, &r))
	assert.Len(t, r.Results, 2)
	require.Equal(t, http.StatusOK, f.do("GET", "/v1/counts", nil, &c))
	assert.Equal(t, 0, c.Total)
}

// TestWhileDelivering: actions racing with the scheduler's workers (run
// with -race) leave every message delivered exactly once.
func TestWhileDelivering(t *testing.T) {
	f := newFixture(t)
	const n = 30
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			f.enqueue("m"+strconv.Itoa(i), "alice@example.org", "hi", 0, "bob@example.com")
		}
	}()
	var l admin.Listing
	var r admin.Results
	for range 5 {
		f.do("POST", "/v1/batch/hold", admin.Batch{Filter: &admin.Filter{}}, &r)
		f.do("GET", "/v1/messages", nil, &l)
	}
	<-done
	f.do("POST", "/v1/batch/hold", admin.Batch{Filter: &admin.Filter{}}, &r)
	require.Equal(t, http.StatusOK, f.do("POST", "/v1/batch/release", admin.Batch{Filter: &admin.Filter{Queue: queue.Hold}}, &r))
	assert.Equal(t, 0, r.Failed, "%+v", r.Results)
	seen := map[string]int{}
	for range n {
		select {
		case d := <-f.delivered:
			seen[d]++
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d delivered", len(seen), n)
		}
	}
	for d, k := range seen {
		assert.Equal(t, 1, k, d)
	}
	assert.Len(t, seen, n)
	// Once the queue is empty nothing more can come: none was twice.
	for i := range n {
		f.waitQueue("m"+strconv.Itoa(i), "")
	}
	assert.Empty(t, f.delivered)
}

package console

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// users is an Authenticator of fixed passwords.
type users map[string]string

func (u users) Authenticate(ctx context.Context, remote netip.Addr, user, pw string) error {
	if p, ok := u[user]; ok && p == pw && pw != "" {
		return nil
	}
	return errors.New("invalid credentials")
}

// fixture is a spool with a scheduler whose transport defers recipients
// named slow*, and the console on an httptest server.
type fixture struct {
	t        *testing.T
	sp       *queue.Spool
	chain    *policy.Chain
	activity *Activity
	console  *Console
	srv      *httptest.Server
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, activity: &Activity{}}
	var err error
	tapped := slog.New(f.activity.LogHandler(quiet().Handler()))
	f.sp, err = queue.Open(filepath.Join(t.TempDir(), "spool"), queue.SpoolConfig{Logger: tapped})
	require.NoError(t, err)
	f.chain = &policy.Chain{Logger: quiet(), Observer: f.activity.Observe}
	f.chain.PreQ("antivirus", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if m.Header.Has("X-Virus-Infected") {
			return policy.QuarantineBecause("virus_q", "X-Virus-Infected: "+m.Header.Get("X-Virus-Infected"))
		}
		return policy.Next()
	})
	tr := queue.TransportFunc(func(ctx context.Context, d *policy.Delivery) []policy.Reply {
		out := make([]policy.Reply, len(d.Rcpts))
		for i, r := range d.Rcpts {
			out[i] = policy.Reply{Code: 250, Enhanced: "2.0.0", Text: "ok"}
			if strings.HasPrefix(r.Addr.Local, "slow") {
				out[i] = policy.Reply{Code: 451, Enhanced: "4.4.1", Text: "mx.example.net: connection timed out"}
			}
		}
		return out
	})
	sch := queue.NewScheduler(f.sp, queue.Config{Chain: f.chain, Transports: map[string]queue.Transport{"t": tr},
		DefaultRoute: policy.Route{Transport: "t"}, MinBackoff: time.Hour, Hostname: "mx.test",
		Logger: tapped, Events: f.activity})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sch.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		f.sp.Close()
	})
	f.console, err = New(Config{Queue: f.sp, Authenticator: users{"admin@doe-family.com": "good", "jane@doe-family.com": "janes"},
		Admins: []string{"admin@DOE-family.com"}, Activity: f.activity, Logger: quiet()})
	require.NoError(t, err)
	f.srv = httptest.NewServer(f.console)
	t.Cleanup(f.srv.Close)
	return f
}

// enqueue queues raw from the SMTP side: the preq rules run first.
func (f *fixture) enqueue(id, from, raw string, rcpts ...string) {
	f.t.Helper()
	tx := policy.NewTransaction(&policy.Conn{Helo: "client.test", Remote: netip.MustParseAddrPort("192.0.2.7:4000")}, id)
	tx.From = policy.MustParseAddress(from)
	for _, r := range rcpts {
		tx.Rcpts = append(tx.Rcpts, policy.Recipient{Addr: policy.MustParseAddress(r)})
	}
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	require.NoError(f.t, err)
	f.chain.EvalPreQ(context.Background(), tx, m)
	require.NoError(f.t, f.sp.Enqueue(context.Background(), tx, m))
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

// client returns an HTTP client with a cookie jar that does not follow
// redirects.
func (f *fixture) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func read(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	return string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the first CSRF token of a page.
func csrf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	require.NotNil(t, m, "no csrf field in %s", page)
	return m[1]
}

// signIn signs c in as user; it returns the status of the POST.
func (f *fixture) signIn(c *http.Client, user, pw string) (int, string) {
	f.t.Helper()
	resp, err := c.Get(f.srv.URL + "/login")
	require.NoError(f.t, err)
	tok := csrf(f.t, read(f.t, resp))
	resp, err = c.PostForm(f.srv.URL+"/login", url.Values{"csrf": {tok}, "user": {user}, "password": {pw}})
	require.NoError(f.t, err)
	return resp.StatusCode, read(f.t, resp)
}

func (f *fixture) get(c *http.Client, path string) (int, string) {
	f.t.Helper()
	resp, err := c.Get(f.srv.URL + path)
	require.NoError(f.t, err)
	return resp.StatusCode, read(f.t, resp)
}

// post posts a form with the CSRF token of the page at from.
func (f *fixture) post(c *http.Client, from, path string, v url.Values) *http.Response {
	f.t.Helper()
	_, page := f.get(c, from)
	v.Set("csrf", csrf(f.t, page))
	resp, err := c.PostForm(f.srv.URL+path, v)
	require.NoError(f.t, err)
	return resp
}

const eicarMsg = "From: <bad@example.org>\r\nTo: <jane@doe-family.com>\r\nSubject: virus\r\nX-Virus-Infected: Eicar-Test-Signature\r\n\r\nX5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n"

func TestNoAccessWithoutSession(t *testing.T) {
	f := newFixture(t)
	f.enqueue("v1", "bad@example.org", eicarMsg, "jane@doe-family.com")
	c := f.client()
	for _, p := range []string{"/", "/quarantine", "/quarantine?q=virus_q", "/queue", "/log", "/message/v1", "/message/v1/eml"} {
		resp, err := c.Get(f.srv.URL + p)
		require.NoError(t, err)
		body := read(t, resp)
		assert.Equal(t, http.StatusSeeOther, resp.StatusCode, p)
		assert.Equal(t, "/login", resp.Header.Get("Location"), p)
		assert.NotContains(t, body, "EICAR", p)
	}
	for _, p := range []string{"/action", "/logout"} {
		resp, err := c.PostForm(f.srv.URL+p, url.Values{"action": {"delete"}, "id": {"v1"}})
		require.NoError(t, err)
		read(t, resp)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, p)
	}
	f.waitQueue("v1", "quarantine/virus_q") // still there
	// A made-up session cookie is no session.
	u, _ := url.Parse(f.srv.URL)
	c.Jar.SetCookies(u, []*http.Cookie{{Name: cookieName, Value: "forged"}})
	code, _ := f.get(c, "/")
	assert.Equal(t, http.StatusSeeOther, code)
	// The stylesheet needs no session.
	code, css := f.get(c, "/static/console.css")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, css, "--accent")
}

func TestSignIn(t *testing.T) {
	f := newFixture(t)
	c := f.client()

	// Without the form's token: refused before the password is looked at.
	resp, err := c.PostForm(f.srv.URL+"/login", url.Values{"user": {"admin@doe-family.com"}, "password": {"good"}})
	require.NoError(t, err)
	read(t, resp)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	// A user who is not an admin, a wrong password.
	code, page := f.signIn(c, "jane@doe-family.com", "janes")
	assert.Equal(t, http.StatusUnauthorized, code)
	assert.Contains(t, page, "Wrong user or password")
	code, _ = f.signIn(c, "admin@doe-family.com", "bad")
	assert.Equal(t, http.StatusUnauthorized, code)

	// Signed in: the session cookie is HttpOnly, SameSite=Strict, and not
	// Secure over plain HTTP.
	resp, err = c.Get(f.srv.URL + "/login")
	require.NoError(t, err)
	tok := csrf(t, read(t, resp))
	resp, err = c.PostForm(f.srv.URL+"/login", url.Values{"csrf": {tok}, "user": {"admin@doe-family.com"}, "password": {"good"}})
	require.NoError(t, err)
	read(t, resp)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	var session *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == cookieName {
			session = ck
		}
	}
	require.NotNil(t, session)
	assert.True(t, session.HttpOnly)
	assert.Equal(t, http.SameSiteStrictMode, session.SameSite)
	assert.False(t, session.Secure)
	code, page = f.get(c, "/")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, page, "admin@doe-family.com")

	// Signing out ends the session.
	resp = f.post(c, "/", "/logout", url.Values{})
	read(t, resp)
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode)
	code, _ = f.get(c, "/")
	assert.Equal(t, http.StatusSeeOther, code)
}

func TestSignInSecureOverTLS(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewTLSServer(f.console)
	defer srv.Close()
	c := srv.Client()
	jar, _ := cookiejar.New(nil)
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get(srv.URL + "/login")
	require.NoError(t, err)
	tok := csrf(t, read(t, resp))
	resp, err = c.PostForm(srv.URL+"/login", url.Values{"csrf": {tok}, "user": {"admin@doe-family.com"}, "password": {"good"}})
	require.NoError(t, err)
	read(t, resp)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	found := false
	for _, ck := range resp.Cookies() {
		if ck.Name == cookieName {
			found = true
			assert.True(t, ck.Secure, "Secure over TLS")
			assert.True(t, ck.HttpOnly)
		}
	}
	assert.True(t, found)
}

func TestSignInFailureLimit(t *testing.T) {
	f := newFixture(t)
	c := f.client()
	for i := range defaultMaxFailures {
		code, _ := f.signIn(c, "admin@doe-family.com", "guess")
		require.Equal(t, http.StatusUnauthorized, code, "attempt %d", i)
	}
	// Now even the right password is refused, unchecked.
	code, page := f.signIn(c, "admin@doe-family.com", "good")
	assert.Equal(t, http.StatusTooManyRequests, code)
	assert.Contains(t, page, "Too many failed sign-ins")
	code, _ = f.get(c, "/")
	assert.Equal(t, http.StatusSeeOther, code, "no session")

	// Once the window has passed, it may sign in again.
	f.console.now = func() time.Time { return time.Now().Add(defaultFailureWindow + time.Minute) }
	code, _ = f.signIn(c, "admin@doe-family.com", "good")
	assert.Equal(t, http.StatusSeeOther, code)
}

func signedIn(t *testing.T, f *fixture) *http.Client {
	c := f.client()
	code, _ := f.signIn(c, "admin@doe-family.com", "good")
	require.Equal(t, http.StatusSeeOther, code)
	return c
}

func TestCSRF(t *testing.T) {
	f := newFixture(t)
	f.enqueue("v1", "bad@example.org", eicarMsg, "jane@doe-family.com")
	c := signedIn(t, f)
	for _, v := range []url.Values{
		{"action": {"delete"}, "id": {"v1"}},
		{"action": {"delete"}, "id": {"v1"}, "csrf": {"wrong"}},
	} {
		resp, err := c.PostForm(f.srv.URL+"/action", v)
		require.NoError(t, err)
		read(t, resp)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	}
	// Another session's token is no good either.
	other := signedIn(t, f)
	_, page := f.get(other, "/")
	resp, err := c.PostForm(f.srv.URL+"/action", url.Values{"action": {"delete"}, "id": {"v1"}, "csrf": {csrf(t, page)}})
	require.NoError(t, err)
	read(t, resp)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	f.waitQueue("v1", "quarantine/virus_q")
}

const hostile = `<script>alert("x")</script>`

func TestHostileMessageIsText(t *testing.T) {
	f := newFixture(t)
	raw := "From: \"" + hostile + "\" <bad@example.org>\r\nTo: <jane@doe-family.com>\r\nSubject: " + hostile + " <img src=http://tracker.example/x.png>\r\n" +
		"X-Evil: <iframe src=\"http://evil.example/\"></iframe>\r\nX-Virus-Infected: " + hostile + "\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" +
		"<html><head><style>p{}</style><script>steal()</script></head><body><p>Hello <b>friend</b></p><img src=\"http://tracker.example/pixel.gif\"><a href=\"http://phish.example/\">click &amp; win</a></body></html>\r\n"
	f.enqueue("h1", "bad@example.org", raw, "jane@doe-family.com")
	f.waitQueue("h1", "quarantine/virus_q")
	c := signedIn(t, f)

	for _, p := range []string{"/quarantine?q=virus_q", "/message/h1"} {
		code, page := f.get(c, p)
		require.Equal(t, http.StatusOK, code, p)
		assert.NotContains(t, page, "<script>alert", p)
		assert.NotContains(t, page, "<img", p)
		assert.NotContains(t, page, "<iframe", p)
		assert.Contains(t, page, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;", p)
	}
	_, page := f.get(c, "/message/h1")
	assert.Contains(t, page, "X-Evil: &lt;iframe src=&#34;http://evil.example/&#34;&gt;&lt;/iframe&gt;")
	// The HTML body is shown as its text: no tag, no script, no link.
	assert.Contains(t, page, "Hello friend")
	assert.Contains(t, page, "click &amp; win")
	assert.NotContains(t, page, "steal()")
	assert.NotContains(t, page, "phish.example")
	assert.NotContains(t, page, "pixel.gif")
	// The reason the rule gave is text too.
	assert.Contains(t, page, "X-Virus-Infected: &lt;script&gt;")

	resp, err := c.Get(f.srv.URL + "/message/h1")
	require.NoError(t, err)
	read(t, resp)
	assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'none'")
	assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
}

func TestPages(t *testing.T) {
	f := newFixture(t)
	f.enqueue("v1", "bad@example.org", eicarMsg, "jane@doe-family.com")
	f.enqueue("v2", "bad@example.org", strings.Replace(eicarMsg, "Subject: virus", "Subject: =?utf-8?q?caf=C3=A9?=", 1), "jane@doe-family.com")
	f.enqueue("d1", "alice@example.org", "Subject: later\r\n\r\nplain text body\r\n", "slow@example.net", "bob@example.net")
	f.waitQueue("d1", queue.Deferred)
	c := signedIn(t, f)

	t.Run("overview", func(t *testing.T) {
		code, page := f.get(c, "/")
		require.Equal(t, http.StatusOK, code)
		assert.Regexp(t, `<span class="n">1</span> deferred`, page)
		assert.Regexp(t, `<span class="n">2</span> quarantine virus_q`, page)
		lines := regexp.MustCompile(`<polyline class="line (s\d)" data-series="(\w+)" data-points="(\d+)" points="([^"]*)"`).FindAllStringSubmatch(page, -1)
		require.Len(t, lines, 6)
		for _, l := range lines {
			assert.Equal(t, "144", l[3], l[2])
			assert.Len(t, strings.Fields(l[4]), 144, l[2])
		}
		assert.Equal(t, "quarantined", lines[5][2])
		assert.Regexp(t, `quarantined <b>2</b>`, page)
		assert.Regexp(t, `delivered <b>1</b>`, page)
		assert.Regexp(t, `deferred <b>1</b>`, page)
	})
	t.Run("quarantine", func(t *testing.T) {
		code, page := f.get(c, "/quarantine")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, page, `href="/message/v1"`)
		assert.Contains(t, page, "café", "encoded words decoded")
		assert.Contains(t, page, "antivirus <small>(smtp)</small>")
		assert.Contains(t, page, "X-Virus-Infected: Eicar-Test-Signature")
		assert.Contains(t, page, "bad@example.org")
		assert.NotContains(t, page, "d1")
	})
	t.Run("queue", func(t *testing.T) {
		code, page := f.get(c, "/queue")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, page, `href="/message/d1"`)
		assert.Contains(t, page, "451 4.4.1 mx.example.net: connection timed out")
		assert.Contains(t, page, "slow@example.net")
		assert.Regexp(t, `<small>in (\d+m|1h)</small>`, page, "next attempt in about an hour (with jitter)")
		code, page = f.get(c, "/queue?q=hold")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, page, "No message in hold")
	})
	t.Run("message", func(t *testing.T) {
		code, page := f.get(c, "/message/d1")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, page, "plain text body")
		assert.Contains(t, page, `value="requeue"`)
		assert.NotContains(t, page, `value="release"`)
		code, page = f.get(c, "/message/v1")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, page, "EICAR-STANDARD-ANTIVIRUS-TEST-FILE")
		assert.Contains(t, page, `value="release"`)
		assert.Contains(t, page, "192.0.2.7")
		code, _ = f.get(c, "/message/nosuch")
		assert.Equal(t, http.StatusNotFound, code)
		code, _ = f.get(c, "/message/..%2f..%2fetc")
		assert.Equal(t, http.StatusBadRequest, code)
	})
	t.Run("eml", func(t *testing.T) {
		resp, err := c.Get(f.srv.URL + "/message/v1/eml")
		require.NoError(t, err)
		body := read(t, resp)
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "message/rfc822", resp.Header.Get("Content-Type"))
		assert.Equal(t, `attachment; filename=v1.eml`, resp.Header.Get("Content-Disposition"))
		assert.Contains(t, body, "EICAR-STANDARD-ANTIVIRUS-TEST-FILE")
	})
	t.Run("download several", func(t *testing.T) {
		resp := f.post(c, "/quarantine", "/action", url.Values{"action": {"download"}, "id": {"v1", "v2"}})
		body := read(t, resp)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "application/zip", resp.Header.Get("Content-Type"))
		zr, err := zip.NewReader(bytes.NewReader([]byte(body)), int64(len(body)))
		require.NoError(t, err)
		require.Len(t, zr.File, 2)
		assert.Equal(t, "v1.eml", zr.File[0].Name)
		assert.Equal(t, "v2.eml", zr.File[1].Name)
	})
	t.Run("log", func(t *testing.T) {
		code, page := f.get(c, "/log")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, page, "slow@example.net")
		assert.Contains(t, page, "quarantine/virus_q")
		code, page = f.get(c, "/log?address=bob%40")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, page, "bob@example.net")
		assert.NotContains(t, page, "slow@example.net")
		code, page = f.get(c, "/log?id=v2")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, page, "quarantine/virus_q")
		assert.NotContains(t, page, "d1")
	})
}

func TestActions(t *testing.T) {
	f := newFixture(t)
	f.enqueue("v1", "bad@example.org", eicarMsg, "jane@doe-family.com")
	f.enqueue("v2", "bad@example.org", eicarMsg, "jane@doe-family.com")
	f.enqueue("v3", "bad@example.org", eicarMsg, "jane@doe-family.com")
	f.enqueue("d1", "alice@example.org", "Subject: later\r\n\r\nx\r\n", "slow@example.net")
	f.enqueue("d2", "alice@example.org", "Subject: later\r\n\r\nx\r\n", "slow2@example.net")
	f.waitQueue("d2", queue.Deferred)
	c := signedIn(t, f)

	// Release one from its page: delivered (the transport takes it).
	resp := f.post(c, "/message/v1", "/action", url.Values{"action": {"release"}, "id": {"v1"}, "back": {"/quarantine?q=virus_q"}})
	read(t, resp)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/quarantine?q=virus_q", resp.Header.Get("Location"))
	f.waitQueue("v1", "")
	_, page := f.get(c, "/quarantine?q=virus_q")
	assert.Contains(t, page, "1 message(s) released.")

	// Delete two selected together.
	resp = f.post(c, "/quarantine", "/action", url.Values{"action": {"delete"}, "id": {"v2", "v3"}, "back": {"/quarantine"}})
	read(t, resp)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	f.waitQueue("v2", "")
	f.waitQueue("v3", "")
	_, page = f.get(c, "/quarantine")
	assert.Contains(t, page, "2 message(s) deleted.")

	// Retry now, then bounce, from the queue page.
	resp = f.post(c, "/queue", "/action", url.Values{"action": {"requeue"}, "id": {"d1"}, "back": {"/queue"}})
	read(t, resp)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp = f.post(c, "/queue", "/action", url.Values{"action": {"bounce"}, "id": {"d2"}, "back": {"https://evil.example/"}})
	read(t, resp)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/", resp.Header.Get("Location"), "no redirect elsewhere")
	f.waitQueue("d2", "")

	// An action the queue refuses is reported, not hidden.
	resp = f.post(c, "/queue", "/action", url.Values{"action": {"release"}, "id": {"nosuch"}, "back": {"/queue"}})
	read(t, resp)
	_, page = f.get(c, "/queue")
	assert.Contains(t, page, "0 message(s) released. 1 failed")

	// Nothing selected, an unknown action.
	resp = f.post(c, "/queue", "/action", url.Values{"action": {"delete"}, "back": {"/queue"}})
	read(t, resp)
	_, page = f.get(c, "/queue")
	assert.Contains(t, page, "Select at least one message.")
	resp = f.post(c, "/queue", "/action", url.Values{"action": {"explode"}, "id": {"d1"}})
	read(t, resp)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

func TestNewChecks(t *testing.T) {
	sp, err := queue.Open(t.TempDir(), queue.SpoolConfig{Logger: quiet()})
	require.NoError(t, err)
	defer sp.Close()
	for _, cfg := range []Config{
		{Authenticator: users{}, Admins: []string{"a@b"}},
		{Queue: sp, Admins: []string{"a@b"}},
		{Queue: sp, Authenticator: users{}},
		{Queue: sp, Authenticator: users{}, Admins: []string{"a@b"}, Path: "console"},
	} {
		_, err := New(cfg)
		assert.Error(t, err)
	}
	c, err := New(Config{Queue: sp, Authenticator: users{"a@b.test": "pw"}, Admins: []string{"a@b.test"}, Path: "/console/", Logger: quiet()})
	require.NoError(t, err)
	srv := httptest.NewServer(c)
	defer srv.Close()
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Get(srv.URL + "/console/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, "/console/login", resp.Header.Get("Location"))
}

func TestQuarantineEmpty(t *testing.T) {
	f := newFixture(t)
	c := signedIn(t, f)
	code, page := f.get(c, "/quarantine")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, page, "No quarantine holds any message.")
	code, page = f.get(c, "/quarantine?q=dmarc")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, page, "This quarantine is empty.")
	// A name that could be no quarantine's only finds nothing.
	code, page = f.get(c, "/quarantine?q=..%2f..%2f%3Cb%3E")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, page, "This quarantine is empty.")
	assert.NotContains(t, page, "<b>")
}

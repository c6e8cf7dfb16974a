package console

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/mtakit/mtakit/queue/admin"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Authenticator checks a user's password: nil for good credentials.
// *auth.CredentialFile of mtakit/auth is one (the same interface as
// smtp.Authenticator).
type Authenticator interface {
	Authenticate(ctx context.Context, remote netip.Addr, username, password string) error
}

// Defaults of Config's zero values.
const (
	defaultSessionTTL    = 8 * time.Hour
	defaultMaxFailures   = 5
	defaultFailureWindow = 15 * time.Minute
	maxSessions          = 1000
	cookieName           = "mtakit_console"
	preCookieName        = "mtakit_console_signin"
)

// Config configures New. Its zero value is not enough: Queue,
// Authenticator and Admins are required.
type Config struct {
	// Queue is the queue shown and changed, through the admin API's
	// implementation (admin.API); required (a *queue.Spool).
	Queue admin.Queue
	// Authenticator checks the passwords of the sign-in form; required.
	Authenticator Authenticator
	// Admins are the users (addresses, as the Authenticator knows them)
	// who may sign in; required. Their domain is compared
	// case-insensitively, their local part exactly.
	Admins []string
	// Activity, when set, feeds the overview's chart and top lists and
	// the log page; nil: the overview shows the queues only.
	Activity *Activity
	// Path is where the console is mounted: "/" (the default) or a
	// prefix ending in "/" ("/console/"); the handler expects the full
	// path (no http.StripPrefix).
	Path string
	// SessionTTL is how long a session lasts after its sign-in; zero
	// means 8 hours.
	SessionTTL time.Duration
	// A client address with MaxFailures failed sign-ins within the last
	// FailureWindow is refused (429), its password not even checked,
	// until the oldest of them is older than that; zero means 5, and 15
	// minutes.
	MaxFailures   int
	FailureWindow time.Duration
	// Logger receives sign-ins, refusals and (through admin.API) every
	// change made; nil means slog.Default().
	Logger *slog.Logger
}

// Console is the web console, an http.Handler. Make it with New.
type Console struct {
	cfg    Config
	api    *admin.API
	log    *slog.Logger
	admins map[string]bool
	pages  map[string]*template.Template
	mux    *http.ServeMux
	static http.Handler

	mu       sync.Mutex
	sessions map[string]*session
	failures map[netip.Addr][]time.Time
	now      func() time.Time // for tests
}

// session is a signed-in user's.
type session struct {
	user    string
	csrf    string
	expires time.Time
	flash   string // a message for the next page
}

// New checks cfg and returns the console.
func New(cfg Config) (*Console, error) {
	switch {
	case cfg.Queue == nil:
		return nil, errors.New("console: Config.Queue is required")
	case cfg.Authenticator == nil:
		return nil, errors.New("console: Config.Authenticator is required")
	case len(cfg.Admins) == 0:
		return nil, errors.New("console: Config.Admins is required: nobody could sign in")
	}
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	if !strings.HasPrefix(cfg.Path, "/") || !strings.HasSuffix(cfg.Path, "/") {
		return nil, errors.New(`console: Config.Path must start and end with "/"`)
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = defaultSessionTTL
	}
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = defaultMaxFailures
	}
	if cfg.FailureWindow <= 0 {
		cfg.FailureWindow = defaultFailureWindow
	}
	c := &Console{cfg: cfg, log: cfg.Logger, admins: map[string]bool{},
		sessions: map[string]*session{}, failures: map[netip.Addr][]time.Time{}}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.api = &admin.API{Queue: cfg.Queue, Logger: c.log}
	for _, a := range cfg.Admins {
		if a = strings.TrimSpace(a); a != "" {
			c.admins[userKey(a)] = true
		}
	}
	var err error
	if c.pages, err = parsePages(cfg.Path); err != nil {
		return nil, err
	}
	sub, _ := fs.Sub(staticFS, "static")
	c.static = http.StripPrefix(cfg.Path+"static/", http.FileServerFS(sub))
	p := cfg.Path
	m := http.NewServeMux()
	m.HandleFunc("GET "+p+"static/", c.serveStatic)
	m.HandleFunc("GET "+p+"login", c.loginPage)
	m.HandleFunc("POST "+p+"login", c.login)
	m.HandleFunc("POST "+p+"logout", c.signedIn(c.logout))
	m.HandleFunc("GET "+p+"{$}", c.signedIn(c.overview))
	m.HandleFunc("GET "+p+"quarantine", c.signedIn(c.quarantine))
	m.HandleFunc("GET "+p+"queue", c.signedIn(c.queuePage))
	m.HandleFunc("GET "+p+"log", c.signedIn(c.logPage))
	m.HandleFunc("GET "+p+"message/{id}", c.signedIn(c.message))
	m.HandleFunc("GET "+p+"message/{id}/eml", c.signedIn(c.eml))
	m.HandleFunc("POST "+p+"action", c.signedIn(c.action))
	c.mux = m
	return c, nil
}

// userKey is a user's name as compared: the domain lowercased.
func userKey(u string) string {
	u = strings.TrimSpace(u)
	if i := strings.LastIndexByte(u, '@'); i >= 0 {
		return u[:i] + strings.ToLower(u[i:])
	}
	return u
}

func (c *Console) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// ServeHTTP implements http.Handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// No script, no frame, nothing from elsewhere: a message's content
	// shown by mistake could not run or load anything.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	c.mux.ServeHTTP(w, r)
}

func (c *Console) serveStatic(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "max-age=3600")
	c.static.ServeHTTP(w, r)
}

// signedIn wraps a handler of the signed-in: without a session a GET is
// sent to the sign-in page and a POST refused; a POST must carry the
// session's CSRF token.
func (c *Console) signedIn(next func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.session(r)
		if s == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, c.cfg.Path+"login", http.StatusSeeOther)
				return
			}
			http.Error(w, "Forbidden: sign in first", http.StatusForbidden)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
			if !sameToken(r.PostFormValue("csrf"), s.csrf) {
				c.log.Warn("console: form refused: bad or missing CSRF token", "user", s.user, "remote", r.RemoteAddr)
				http.Error(w, "Forbidden: the form's security token is missing or wrong; reload the page", http.StatusForbidden)
				return
			}
		}
		next(w, r, s)
	}
}

func sameToken(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// session returns the request's valid session, or nil.
func (c *Console) session(r *http.Request) *session {
	ck, err := r.Cookie(cookieName)
	if err != nil || ck.Value == "" {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sessions[ck.Value]
	if s == nil {
		return nil
	}
	if c.clock().After(s.expires) {
		delete(c.sessions, ck.Value)
		return nil
	}
	return s
}

// takeFlash returns and clears the session's message.
func (c *Console) takeFlash(s *session) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := s.flash
	s.flash = ""
	return f
}

func (c *Console) setFlash(s *session, f string) {
	c.mu.Lock()
	s.flash = f
	c.mu.Unlock()
}

func token() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (c *Console) cookie(r *http.Request, name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: c.cfg.Path, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
}

func remoteAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

// limited reports whether addr has failed too often lately, forgetting
// older failures.
func (c *Console) limited(addr netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	cut := c.clock().Add(-c.cfg.FailureWindow)
	fs := c.failures[addr]
	for len(fs) > 0 && fs[0].Before(cut) {
		fs = fs[1:]
	}
	if len(fs) == 0 {
		delete(c.failures, addr)
		return false
	}
	c.failures[addr] = fs
	return len(fs) >= c.cfg.MaxFailures
}

func (c *Console) fail(addr netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.failures) > 100000 {
		clear(c.failures) // a flood of addresses: start again rather than grow
	}
	c.failures[addr] = append(c.failures[addr], c.clock())
}

type loginData struct {
	CSRF  string
	Error string
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if c.session(r) != nil {
		http.Redirect(w, r, c.cfg.Path, http.StatusSeeOther)
		return
	}
	c.renderLogin(w, r, http.StatusOK, "")
}

// renderLogin shows the sign-in form with a new token, kept in a cookie
// of its own (the form has no session yet): the POST must carry both.
func (c *Console) renderLogin(w http.ResponseWriter, r *http.Request, status int, msg string) {
	t := token()
	http.SetCookie(w, c.cookie(r, preCookieName, t, 3600))
	w.Header().Set("Cache-Control", "no-store")
	c.render(w, status, "login", pageData{Title: "Sign in", Data: loginData{CSRF: t, Error: msg}})
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	pre, err := r.Cookie(preCookieName)
	if err != nil || !sameToken(r.PostFormValue("csrf"), pre.Value) {
		c.log.Warn("console: sign-in refused: bad or missing CSRF token", "remote", r.RemoteAddr)
		http.Error(w, "Forbidden: the form's security token is missing or wrong; reload the page", http.StatusForbidden)
		return
	}
	addr := remoteAddr(r)
	if c.limited(addr) {
		c.log.Warn("console: sign-in refused: too many failures", "remote", addr.String())
		c.renderLogin(w, r, http.StatusTooManyRequests, "Too many failed sign-ins from your address: try again later.")
		return
	}
	user, pw := strings.TrimSpace(r.PostFormValue("user")), r.PostFormValue("password")
	err = c.cfg.Authenticator.Authenticate(r.Context(), addr, user, pw)
	if err == nil && !c.admins[userKey(user)] {
		err = errors.New("not an admin")
	}
	if err != nil {
		c.fail(addr)
		c.log.Warn("console: sign-in failed", "user", user, "remote", addr.String(), "error", err)
		c.renderLogin(w, r, http.StatusUnauthorized, "Wrong user or password, or not an administrator.")
		return
	}
	s := &session{user: userKey(user), csrf: token(), expires: c.clock().Add(c.cfg.SessionTTL)}
	id := token()
	c.mu.Lock()
	if len(c.sessions) >= maxSessions {
		now := c.clock()
		for k, o := range c.sessions {
			if now.After(o.expires) {
				delete(c.sessions, k)
			}
		}
		if len(c.sessions) >= maxSessions {
			clear(c.sessions) // sign everyone out rather than grow
		}
	}
	c.sessions[id] = s
	c.mu.Unlock()
	c.log.Info("console: signed in", "user", s.user, "remote", addr.String())
	http.SetCookie(w, c.cookie(r, preCookieName, "", -1))
	http.SetCookie(w, c.cookie(r, cookieName, id, int(c.cfg.SessionTTL/time.Second)))
	http.Redirect(w, r, c.cfg.Path, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	if ck, err := r.Cookie(cookieName); err == nil {
		c.mu.Lock()
		delete(c.sessions, ck.Value)
		c.mu.Unlock()
	}
	c.log.Info("console: signed out", "user", s.user)
	http.SetCookie(w, c.cookie(r, cookieName, "", -1))
	http.Redirect(w, r, c.cfg.Path+"login", http.StatusSeeOther)
}

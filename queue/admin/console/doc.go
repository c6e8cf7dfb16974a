// Package console is the web console of a mail server: pages for the
// people who run it, to review the quarantines (release, delete, download
// a message), look after the queue (retry now, bounce, delete deferred
// mail), see the activity of the last 24 hours at a glance, and search the
// recent decisions.
//
// The console is an http.Handler (Console, made by New), to mount beside
// the admin API of package admin or anywhere an embedder likes. Every
// page reads and every button changes the queue through admin.API, the
// implementation the admin API serves: one code path for release, delete,
// bounce and the rest. It is server-rendered with html/template, its
// stylesheet embedded; it has no JavaScript at all, every action being a
// form, and its pages fit a phone's screen.
//
// # Sign-in and security
//
// Only the users of Config.Admins may sign in, with the password their
// Config.Authenticator knows (the bcrypt credential file of mtakit/auth,
// *auth.CredentialFile, is one). A sign-in makes a session kept in memory
// for Config.SessionTTL, its cookie HttpOnly, SameSite=Strict, and Secure
// when the request came over TLS. Every form carries a CSRF token (the
// session's; the sign-in form's own, in a cookie of its own) and a POST
// without it is refused (403). A client address with Config.MaxFailures
// failed sign-ins within the last Config.FailureWindow is refused (429)
// until they are older than that. Without a session, a page
// redirects to the sign-in page and a form is refused; only the
// stylesheet is served to anyone.
//
// What a message holds is shown as text, escaped: its header fields one
// per line, and its body as text (the text/plain part, or the text of
// its HTML without tags, links or images; other parts are listed, not
// shown). The pages are served with a Content-Security-Policy that allows
// no script and nothing from another origin, and a message is downloaded
// (.eml, or a zip of several) as an attachment, never rendered.
//
// # Activity
//
// The overview's chart and top lists and the log page come from an
// Activity (Config.Activity), an in-memory recorder fed like the metrics
// of mtakit/policy/metrics: it implements smtp.Events and queue.Events and
// has a chain observer (Observe), so it can be mtakit.Server.Events, and
// it reads the server's log lines through LogHandler (the "queue: result"
// lines and the SMTP refusals). It keeps 24 hours of counters per 10
// minutes and the last LogSize decisions; nothing survives a restart.
//
// # Configuration and logging
//
// New takes a Config (the queue, the authenticator, the admins, the
// Activity, the mount path, session and failure limits), read once;
// Activity is configured by its field (LogSize), which must not change
// once in use. Each zero value is a documented default. Logging goes to
// Config.Logger: sign-ins (INFO), refused sign-ins and forms (WARN), and
// through admin.API a line per change made; nil means slog.Default().
// There is no other way to set a logger and no package-level state.
package console

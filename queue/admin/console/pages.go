package console

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"io"
	"mime"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/admin"
)

// pageData is what every page's template gets.
type pageData struct {
	Title string
	Nav   string // the menu entry of the page
	User  string
	CSRF  string
	Flash string
	Base  string // Config.Path
	Data  any
}

// pageNames are the templates, each with layout.html.
var pageNames = []string{"login", "overview", "quarantine", "queue", "log", "message", "error"}

func parsePages(base string) (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"base": func() string { return base },
		"when": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.Local().Format("2006-01-02 15:04:05")
		},
		"ago":   ago,
		"size":  humanSize,
		"join":  func(s []string) string { return strings.Join(s, ", ") },
		"short": func(s string, n int) string { return shorten(s, n) },
	}
	out := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}

func (c *Console) render(w http.ResponseWriter, status int, page string, d pageData) {
	d.Base = c.cfg.Path
	var buf bytes.Buffer
	if err := c.pages[page].Execute(&buf, d); err != nil {
		c.log.Error("console: rendering a page", "page", page, "error", err)
		http.Error(w, "Internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// page renders a page of the signed-in.
func (c *Console) page(w http.ResponseWriter, s *session, page, title string, data any) {
	c.render(w, http.StatusOK, page, pageData{Title: title, Nav: page, User: s.user, CSRF: s.csrf, Flash: c.takeFlash(s), Data: data})
}

// failPage shows an error of the queue.
func (c *Console) failPage(w http.ResponseWriter, s *session, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, queue.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, queue.ErrBadID), errors.Is(err, admin.ErrNoAction), admin.IsBadRequest(err):
		status = http.StatusBadRequest
	}
	c.render(w, status, "error", pageData{Title: "Error", User: s.user, CSRF: s.csrf, Data: err.Error()})
}

func ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t)
	future := d < 0
	if future {
		d = -d
	}
	var s string
	switch {
	case d < time.Minute:
		s = strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		s = strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		s = strconv.Itoa(int(d/time.Hour)) + "h"
	default:
		s = strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

func humanSize(n int64) string {
	switch {
	case n < 1024:
		return strconv.FormatInt(n, 10) + " B"
	case n < 1<<20:
		return strconv.FormatFloat(float64(n)/1024, 'f', 1, 64) + " KiB"
	}
	return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
}

func shorten(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// queueCount is a queue and its size.
type queueCount struct {
	Name, Label string
	Count       int
}

// counts returns the queues, the base ones then the quarantines.
func (c *Console) counts() (base, quarantines []queueCount, total int, err error) {
	cs, err := c.api.Counts()
	if err != nil {
		return nil, nil, 0, err
	}
	names := make([]string, 0, len(cs.Queues))
	for q := range cs.Queues {
		names = append(names, q)
	}
	order := map[string]int{queue.Working: 1, queue.Deliver: 2, queue.Deferred: 3, queue.Hold: 4, queue.Dead: 5, queue.Corrupt: 6}
	sort.Slice(names, func(i, j int) bool {
		oi, oj := order[names[i]], order[names[j]]
		if oi == 0 {
			oi = 100
		}
		if oj == 0 {
			oj = 100
		}
		if oi != oj {
			return oi < oj
		}
		return names[i] < names[j]
	})
	for _, q := range names {
		if name, ok := strings.CutPrefix(q, queue.QuarantinePrefix); ok {
			quarantines = append(quarantines, queueCount{q, name, cs.Queues[q]})
		} else {
			base = append(base, queueCount{q, q, cs.Queues[q]})
		}
	}
	return base, quarantines, cs.Total, nil
}

type overviewData struct {
	Queues, Quarantines []queueCount
	Total               int
	HasActivity         bool
	Chart               chartView
	TopRules            []Count
	TopClients          []Count
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	base, qs, total, err := c.counts()
	if err != nil {
		c.failPage(w, s, err)
		return
	}
	d := overviewData{Queues: base, Quarantines: qs, Total: total}
	if a := c.cfg.Activity; a != nil {
		d.HasActivity = true
		d.Chart = drawChart(a.Chart())
		d.TopRules = a.TopRules(10)
		d.TopClients = a.TopClients(10)
	}
	c.page(w, s, "overview", "Overview", d)
}

// maxRows bounds the rows of a list page.
const maxRows = 200

// row is a message in a list.
type row struct {
	admin.Summary
	Subject    string
	Quarantine *queue.QuarantineNote
	RcptStates []queue.RcptState
	Unreadable bool
}

type listData struct {
	Queue  string
	Label  string
	Tabs   []queueCount
	Rows   []row
	More   int // rows not shown
	Back   string
	Detail bool // the queue page: recipients' states
}

// rows reads the messages of queue q (at most maxRows).
func (c *Console) rows(q string) ([]row, int, error) {
	es, err := c.api.Find(admin.Filter{Queue: q})
	if err != nil {
		return nil, 0, err
	}
	more := 0
	if len(es) > maxRows {
		more = len(es) - maxRows
		es = es[:maxRows]
	}
	out := make([]row, 0, len(es))
	for _, e := range es {
		rw := row{Summary: admin.Summarize(e)}
		if e.Envelope == nil {
			rw.Unreadable = true
		} else {
			rw.Quarantine = e.Envelope.Quarantine
			rw.RcptStates = e.Envelope.Rcpts
		}
		if d, err := c.api.Show(e.ID); err == nil {
			rw.Subject = headerValue(d.Header, "Subject")
		}
		out = append(out, rw)
	}
	return out, more, nil
}

// headerValue returns the first field named name of fields ("Name:
// value" strings), its encoded words decoded.
func headerValue(fields []string, name string) string {
	for _, f := range fields {
		k, v, ok := strings.Cut(f, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			v = strings.TrimSpace(v)
			if dec, err := (&mime.WordDecoder{}).DecodeHeader(v); err == nil {
				return dec
			}
			return v
		}
	}
	return ""
}

func (c *Console) quarantine(w http.ResponseWriter, r *http.Request, s *session) {
	_, qs, _, err := c.counts()
	if err != nil {
		c.failPage(w, s, err)
		return
	}
	d := listData{Tabs: qs}
	want := r.URL.Query().Get("q")
	for _, q := range qs {
		if q.Label == want || (want == "" && d.Queue == "") {
			d.Queue, d.Label = q.Name, q.Label
		}
	}
	if d.Queue == "" && want != "" {
		// A quarantine that does not exist (yet), or no longer: empty.
		d.Queue, d.Label = queue.QuarantinePrefix+want, want
	}
	if d.Queue != "" {
		if d.Rows, d.More, err = c.rows(d.Queue); err != nil {
			c.failPage(w, s, err)
			return
		}
		d.Back = c.cfg.Path + "quarantine?" + url.Values{"q": {d.Label}}.Encode()
	}
	c.page(w, s, "quarantine", "Quarantine", d)
}

func (c *Console) queuePage(w http.ResponseWriter, r *http.Request, s *session) {
	base, _, _, err := c.counts()
	if err != nil {
		c.failPage(w, s, err)
		return
	}
	d := listData{Tabs: base, Detail: true, Queue: queue.Deferred, Label: queue.Deferred}
	if want := r.URL.Query().Get("q"); want != "" {
		for _, q := range base {
			if q.Name == want {
				d.Queue, d.Label = q.Name, q.Label
			}
		}
	}
	if d.Rows, d.More, err = c.rows(d.Queue); err != nil {
		c.failPage(w, s, err)
		return
	}
	d.Back = c.cfg.Path + "queue?" + url.Values{"q": {d.Queue}}.Encode()
	c.page(w, s, "queue", "Queue", d)
}

type logData struct {
	Filter    LogFilter
	Lines     []LogLine
	Available bool
	Max       int
}

const logRows = 500

func (c *Console) logPage(w http.ResponseWriter, r *http.Request, s *session) {
	v := r.URL.Query()
	d := logData{Filter: LogFilter{Address: v.Get("address"), Client: v.Get("client"), ID: v.Get("id")}, Max: logRows}
	if a := c.cfg.Activity; a != nil {
		d.Available = true
		d.Lines = a.Log(d.Filter, logRows)
	}
	c.page(w, s, "log", "Log", d)
}

type messageData struct {
	*admin.Detail
	Label   string // the queue, for the user
	Subject string
	Body    bodyView
	Back    string
	Release bool // the actions its queue allows
	Requeue bool
	Bounce  bool
	Hold    bool
}

func (c *Console) message(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	d, err := c.api.Show(id)
	if err != nil {
		c.failPage(w, s, err)
		return
	}
	md := messageData{Detail: d, Label: d.Queue, Subject: headerValue(d.Header, "Subject")}
	q := d.Queue
	switch {
	case strings.HasPrefix(q, queue.QuarantinePrefix):
		md.Label = "quarantine " + strings.TrimPrefix(q, queue.QuarantinePrefix)
		md.Back = c.cfg.Path + "quarantine?" + url.Values{"q": {strings.TrimPrefix(q, queue.QuarantinePrefix)}}.Encode()
		md.Release, md.Bounce = true, true
	case q == queue.Hold:
		md.Back = c.cfg.Path + "queue?q=" + q
		md.Release, md.Bounce = true, true
	case q == queue.Deferred || q == queue.Dead:
		md.Back = c.cfg.Path + "queue?q=" + q
		md.Requeue, md.Bounce, md.Hold = true, true, true
	default:
		md.Back = c.cfg.Path + "queue?q=" + q
	}
	if rc, err := c.api.Raw(id); err == nil {
		md.Body = readBody(rc)
		rc.Close()
	} else {
		md.Body.Note = "The message cannot be read: " + err.Error()
	}
	c.page(w, s, "message", "Message "+id, md)
}

// emlName is a safe file name for message id.
func emlName(id string) string {
	b := []byte(id)
	for i, ch := range b {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_' || ch == '.') {
			b[i] = '_'
		}
	}
	return string(b) + ".eml"
}

func (c *Console) eml(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	rc, err := c.api.Raw(id)
	if err != nil {
		c.failPage(w, s, err)
		return
	}
	defer rc.Close()
	// Downloaded, never shown: the browser must not render the message.
	w.Header().Set("Content-Type", "message/rfc822")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": emlName(id)}))
	io.Copy(w, rc)
}

// actionNames are what the forms may ask, with the words of the flash.
var actionNames = map[string]string{
	"release": "released", "requeue": "queued for a new attempt now", "hold": "held",
	"bounce": "returned to their senders", "delete": "deleted",
}

func (c *Console) action(w http.ResponseWriter, r *http.Request, s *session) {
	action := r.PostFormValue("action")
	ids := r.PostForm["id"]
	back := r.PostFormValue("back")
	if !strings.HasPrefix(back, c.cfg.Path) || strings.HasPrefix(back, "//") || strings.Contains(back, "\\") {
		back = c.cfg.Path
	}
	if len(ids) == 0 {
		c.setFlash(s, "Select at least one message.")
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	if action == "download" {
		c.download(w, s, ids)
		return
	}
	done, ok := actionNames[action]
	if !ok {
		c.failPage(w, s, fmt.Errorf("%w: %q", admin.ErrNoAction, action))
		return
	}
	res, err := c.api.DoAll(r.Context(), action, ids)
	if err != nil {
		c.failPage(w, s, err)
		return
	}
	ok1 := len(res.Results) - res.Failed
	msg := fmt.Sprintf("%d message(s) %s.", ok1, done)
	if res.Failed > 0 {
		var errs []string
		for _, x := range res.Results {
			if x.Error != "" {
				errs = append(errs, x.Error)
			}
		}
		msg += fmt.Sprintf(" %d failed: %s", res.Failed, strings.Join(errs, "; "))
	}
	c.setFlash(s, msg)
	http.Redirect(w, r, back, http.StatusSeeOther)
}

// download sends one message as .eml, several in a zip of .eml files.
func (c *Console) download(w http.ResponseWriter, s *session, ids []string) {
	if len(ids) == 1 {
		rc, err := c.api.Raw(ids[0])
		if err != nil {
			c.failPage(w, s, err)
			return
		}
		defer rc.Close()
		w.Header().Set("Content-Type", "message/rfc822")
		w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": emlName(ids[0])}))
		io.Copy(w, rc)
		return
	}
	// Checked before the first byte is sent: an unknown message is an
	// error page, not a broken zip.
	for _, id := range ids {
		if _, err := c.api.Show(id); err != nil {
			c.failPage(w, s, err)
			return
		}
	}
	w.Header().Set("Content-Type", "application/zip")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": "messages.zip"}))
	zw := zip.NewWriter(w)
	for _, id := range ids {
		rc, err := c.api.Raw(id)
		if err != nil {
			continue // gone since: left out
		}
		f, err := zw.Create(emlName(id))
		if err == nil {
			io.Copy(f, rc)
		}
		rc.Close()
	}
	zw.Close()
}

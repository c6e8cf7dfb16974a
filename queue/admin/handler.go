package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mtakit/mtakit/queue"
)

// Handler serves the admin API (see the package documentation) on a
// queue. Set its fields before serving, and do not change them after.
type Handler struct {
	// Queue is the queue administered; required (a *queue.Spool).
	Queue Queue
	// Token, when not empty, is required in every request as
	// "Authorization: Bearer <Token>"; a request without it gets 401.
	// Empty: no check, for a listener that is protected otherwise (a
	// Unix socket of mode 0600).
	Token string
	// Logger receives a line per change (held, released, ...), with the
	// message's ID. Nil means slog.Default().
	Logger *slog.Logger

	once sync.Once
	mux  *http.ServeMux
}

// Limits of a request.
const (
	defaultLimit = 100
	maxLimit     = 1000
	maxBody      = 1 << 20
)

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.once.Do(func() {
		m := http.NewServeMux()
		m.HandleFunc("GET /v1/messages", h.list)
		m.HandleFunc("GET /v1/messages/{id}", h.show)
		m.HandleFunc("GET /v1/messages/{id}/raw", h.raw)
		m.HandleFunc("POST /v1/messages/{id}/{action}", h.act)
		m.HandleFunc("DELETE /v1/messages/{id}", h.del)
		m.HandleFunc("POST /v1/batch/{action}", h.batch)
		m.HandleFunc("GET /v1/counts", h.counts)
		h.mux = m
	})
	if h.Token != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(h.Token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mtakit queue admin"`)
			fail(w, http.StatusUnauthorized, errors.New("a valid bearer token is required"))
			return
		}
	}
	if h.Queue == nil {
		fail(w, http.StatusInternalServerError, errors.New("admin: Handler.Queue is not set"))
		return
	}
	hd, pattern := h.mux.Handler(r)
	if pattern == "" {
		// The mux's own 404 or 405 (with its Allow header), in JSON.
		hd.ServeHTTP(jsonError{w}, r)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// jsonError turns the plain text error a ServeMux writes into the JSON of
// the API's errors.
type jsonError struct{ w http.ResponseWriter }

func (j jsonError) Header() http.Header { return j.w.Header() }

func (j jsonError) WriteHeader(code int) {
	msg := http.StatusText(code)
	if code == http.StatusNotFound {
		msg = "no such endpoint"
	}
	fail(j.w, code, errors.New(msg))
}

func (j jsonError) Write(p []byte) (int, error) { return len(p), nil }

// api is the implementation the handler serves.
func (h *Handler) api() *API { return &API{Queue: h.Queue, Logger: h.Logger} }

// errorBody is the body of every error response.
type errorBody struct {
	Error string `json:"error"`
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func fail(w http.ResponseWriter, status int, err error) {
	reply(w, status, errorBody{Error: err.Error()})
}

// status returns the HTTP status of an error of the queue.
func status(err error) int {
	var bad badRequest
	switch {
	case errors.As(err, &bad):
		return http.StatusBadRequest
	case errors.Is(err, queue.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, queue.ErrBadID):
		return http.StatusBadRequest
	case errors.Is(err, queue.ErrBadQueue):
		return http.StatusConflict // the message's queue does not allow it
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// badRequest is an error of the request itself (400).
type badRequest struct{ error }

func (b badRequest) Unwrap() error { return b.error }

// matcher is a parsed Filter.
type matcher struct {
	f              Filter
	minAge, maxAge time.Duration
	now            time.Time
}

func newMatcher(f Filter, now time.Time) (*matcher, error) {
	m := &matcher{f: f, now: now}
	for _, d := range []struct {
		s    string
		name string
		to   *time.Duration
	}{{f.MinAge, "min_age", &m.minAge}, {f.MaxAge, "max_age", &m.maxAge}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil || v < 0 {
			return nil, badRequest{fmt.Errorf("%s: want a duration like 90m or 2h, not %q", d.name, d.s)}
		}
		*d.to = v
	}
	m.f.Sender, m.f.Recipient = strings.ToLower(f.Sender), strings.ToLower(f.Recipient)
	return m, nil
}

// queues returns the queues the filter looks at.
func (m *matcher) queues(q Queue) ([]string, error) {
	all, err := q.Queues()
	if err != nil {
		return nil, err
	}
	if m.f.Queue == "" {
		return all, nil
	}
	for _, name := range all {
		if name == m.f.Queue {
			return []string{name}, nil
		}
	}
	if strings.HasPrefix(m.f.Queue, queue.QuarantinePrefix) {
		return nil, nil // a quarantine that does not exist (yet): empty
	}
	return nil, badRequest{fmt.Errorf("%w: %q", queue.ErrBadQueue, m.f.Queue)}
}

func (m *matcher) match(e queue.Entry) bool {
	env := e.Envelope
	if env == nil {
		// Unreadable: shown when nothing but the queue is asked for.
		return m.f.Sender == "" && m.f.Recipient == "" && m.minAge == 0 && m.maxAge == 0
	}
	if m.f.Sender != "" {
		from := strings.ToLower(env.From.String())
		if m.f.Sender == "<>" {
			if from != "" {
				return false
			}
		} else if !strings.Contains(from, m.f.Sender) {
			return false
		}
	}
	if m.f.Recipient != "" {
		found := false
		for _, r := range env.Rcpts {
			if strings.Contains(strings.ToLower(r.Addr.String()), m.f.Recipient) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	age := m.now.Sub(env.Received)
	if m.minAge > 0 && age < m.minAge {
		return false
	}
	if m.maxAge > 0 && age > m.maxAge {
		return false
	}
	return true
}

// find returns the entries that f selects (see API.Find).
func (h *Handler) find(f Filter) ([]queue.Entry, error) { return h.api().Find(f) }

func summary(e queue.Entry) Summary {
	s := Summary{ID: e.ID, Queue: e.Queue}
	env := e.Envelope
	if env == nil {
		if e.Err != nil {
			s.Error = e.Err.Error()
		}
		return s
	}
	s.From, s.Size, s.Received = env.From.String(), env.Size, env.Received
	s.Attempts, s.NextAttempt, s.LastError = env.Attempts, env.NextAttempt, env.LastError
	s.Rcpts = make([]string, len(env.Rcpts))
	for i, r := range env.Rcpts {
		s.Rcpts[i] = r.Addr.String()
	}
	return s
}

func filterOf(r *http.Request) Filter {
	v := r.URL.Query()
	return Filter{Queue: v.Get("queue"), Sender: v.Get("sender"), Recipient: v.Get("recipient"),
		MinAge: v.Get("min_age"), MaxAge: v.Get("max_age")}
}

// intParam returns query parameter name as a number >= 0 (def when absent).
func intParam(r *http.Request, name string, def int) (int, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s: want a number >= 0, not %q", name, s)
	}
	return n, nil
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	offset, err := intParam(r, "offset", 0)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	limit, err := intParam(r, "limit", defaultLimit)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	if limit == 0 || limit > maxLimit {
		limit = min(max(limit, defaultLimit), maxLimit)
	}
	es, err := h.find(filterOf(r))
	if err != nil {
		fail(w, status(err), err)
		return
	}
	out := Listing{Total: len(es), Offset: offset, Messages: []Summary{}}
	if offset < len(es) {
		page := es[offset:min(offset+limit, len(es))]
		for _, e := range page {
			out.Messages = append(out.Messages, summary(e))
		}
		if end := offset + len(page); end < len(es) {
			out.Next = end
		}
	}
	reply(w, http.StatusOK, out)
}

func (h *Handler) show(w http.ResponseWriter, r *http.Request) {
	d, err := h.api().Show(r.PathValue("id"))
	if err != nil {
		fail(w, status(err), err)
		return
	}
	reply(w, http.StatusOK, d)
}

// unfold returns a raw header field on one line.
func unfold(raw []byte) string {
	s := strings.TrimRight(string(raw), "\r\n")
	s = strings.ReplaceAll(s, "\r\n", "")
	return strings.ReplaceAll(s, "\n", "")
}

func (h *Handler) raw(w http.ResponseWriter, r *http.Request) {
	rc, err := h.Queue.ReadMessage(r.PathValue("id"))
	if err != nil {
		fail(w, status(err), err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "message/rfc822")
	io.Copy(w, rc)
}

// action returns the request's {action} and the Queue method that does
// it; it answers 404 and returns ok false when there is no such action.
func (h *Handler) action(w http.ResponseWriter, r *http.Request) (action string, fn func(context.Context, string) error, ok bool) {
	action = r.PathValue("action")
	if fn, ok = actions(h.Queue)[action]; !ok {
		fail(w, http.StatusNotFound, fmt.Errorf("no such action %q (release, requeue, hold, bounce, delete)", action))
	}
	return action, fn, ok
}

func (h *Handler) act(w http.ResponseWriter, r *http.Request) {
	if action, fn, ok := h.action(w, r); ok {
		h.act1(w, r, action, fn)
	}
}

func (h *Handler) del(w http.ResponseWriter, r *http.Request) { h.act1(w, r, "delete", h.Queue.Delete) }

func (h *Handler) act1(w http.ResponseWriter, r *http.Request, action string, fn func(context.Context, string) error) {
	id := r.PathValue("id")
	res, err := h.api().do(r.Context(), action, fn, id)
	if err != nil {
		reply(w, status(err), res)
		return
	}
	reply(w, http.StatusOK, res)
}

func (h *Handler) batch(w http.ResponseWriter, r *http.Request) {
	action, fn, ok := h.action(w, r)
	if !ok {
		return
	}
	var b Batch
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("request body: %w", err))
		return
	}
	ids := b.IDs
	switch {
	case len(ids) > 0 && b.Filter != nil:
		fail(w, http.StatusBadRequest, errors.New("give ids or a filter, not both"))
		return
	case len(ids) == 0 && b.Filter == nil:
		fail(w, http.StatusBadRequest, errors.New("give ids, or a filter (an empty filter selects every message)"))
		return
	case b.Filter != nil:
		es, err := h.find(*b.Filter)
		if err != nil {
			fail(w, status(err), err)
			return
		}
		for _, e := range es {
			ids = append(ids, e.ID)
		}
	}
	reply(w, http.StatusOK, h.api().doAll(r.Context(), action, fn, ids))
}

func (h *Handler) counts(w http.ResponseWriter, r *http.Request) {
	c, err := h.api().Counts()
	if err != nil {
		fail(w, status(err), err)
		return
	}
	reply(w, http.StatusOK, c)
}

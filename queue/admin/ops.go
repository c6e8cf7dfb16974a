package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/mtakit/mtakit/queue"
)

// ErrNoAction is returned (wrapped) by API.Do for an action that does not
// exist.
var ErrNoAction = errors.New("no such action (release, requeue, hold, bounce, delete)")

// API is the admin API as Go methods: the one implementation of listing,
// showing and changing messages that Handler serves over HTTP and that the
// web console (package console) shows, so that both do the same thing the
// same way. Set its fields before use, and do not change them after; it is
// safe for concurrent use when its Queue is.
type API struct {
	// Queue is the queue administered; required (a *queue.Spool).
	Queue Queue
	// Logger receives a line per change made (INFO) or refused (WARN),
	// with the message's id. Nil means slog.Default().
	Logger *slog.Logger
}

func (a *API) log() *slog.Logger {
	if a.Logger != nil {
		return a.Logger
	}
	return slog.Default()
}

// Actions lists the names of the actions Do knows, in a fixed order.
func Actions() []string { return []string{"release", "requeue", "hold", "bounce", "delete"} }

// actions maps the names of the actions to the Queue's methods.
func actions(q Queue) map[string]func(context.Context, string) error {
	return map[string]func(context.Context, string) error{
		"release": q.Release,
		"requeue": q.Requeue,
		"hold":    q.Hold,
		"bounce":  q.Bounce,
		"delete":  q.Delete,
	}
}

// Find returns the messages f selects, queue by queue (in the order of
// Queue.Queues), oldest first in each. A bad filter is an error that
// IsBadRequest reports.
func (a *API) Find(f Filter) ([]queue.Entry, error) {
	m, err := newMatcher(f, time.Now())
	if err != nil {
		return nil, err
	}
	qs, err := m.queues(a.Queue)
	if err != nil {
		return nil, err
	}
	var out []queue.Entry
	for _, q := range qs {
		es, err := a.Queue.List(q)
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			if m.match(e) {
				out = append(out, e)
			}
		}
	}
	return out, nil
}

// Summarize returns the Summary of an entry, as the list shows it.
func Summarize(e queue.Entry) Summary { return summary(e) }

// Show returns message id: its queue, envelope (without the header block,
// which Header holds as delivered, one unfolded field per string).
func (a *API) Show(id string) (*Detail, error) {
	it, err := a.Queue.Show(id)
	if err != nil {
		return nil, err
	}
	env := *it.Envelope
	env.Head, env.BodyOff = nil, 0 // the header is below, as text
	d := &Detail{ID: id, Queue: it.Queue, Envelope: &env, Header: []string{}}
	if it.Header != nil {
		for _, f := range it.Header.Fields() {
			d.Header = append(d.Header, unfold(f.Raw))
		}
	}
	return d, nil
}

// Raw returns the message id as delivered; close it.
func (a *API) Raw(id string) (io.ReadCloser, error) { return a.Queue.ReadMessage(id) }

// Do runs action (one of Actions) on message id and logs it. The Result
// carries the error's text too.
func (a *API) Do(ctx context.Context, action, id string) (Result, error) {
	fn, ok := actions(a.Queue)[action]
	if !ok {
		err := badRequest{fmt.Errorf("%w: %q", ErrNoAction, action)}
		return Result{ID: id, Action: action, Error: err.Error()}, err
	}
	return a.do(ctx, action, fn, id)
}

// DoAll runs action on each message of ids in order, as a batch does.
func (a *API) DoAll(ctx context.Context, action string, ids []string) (Results, error) {
	fn, ok := actions(a.Queue)[action]
	if !ok {
		return Results{}, badRequest{fmt.Errorf("%w: %q", ErrNoAction, action)}
	}
	return a.doAll(ctx, action, fn, ids), nil
}

// doAll runs action (the Queue method fn) on each message of ids.
func (a *API) doAll(ctx context.Context, action string, fn func(context.Context, string) error, ids []string) Results {
	out := Results{Results: make([]Result, 0, len(ids))}
	for _, id := range ids {
		res, err := a.do(ctx, action, fn, id)
		if err != nil {
			out.Failed++
		}
		out.Results = append(out.Results, res)
	}
	return out
}

// do runs action (the Queue method fn) on message id and logs it.
func (a *API) do(ctx context.Context, action string, fn func(context.Context, string) error, id string) (Result, error) {
	res := Result{ID: id, Action: action}
	if err := fn(ctx, id); err != nil {
		res.Error = err.Error()
		a.log().Warn("queue admin: "+action+" failed", "id", id, "action", action, "error", err)
		return res, err
	}
	a.log().Info("queue admin: "+action, "id", id, "action", action)
	return res, nil
}

// Counts counts the messages of each queue (quarantines included).
func (a *API) Counts() (*Counts, error) {
	qs, err := a.Queue.Queues()
	if err != nil {
		return nil, err
	}
	out := &Counts{Queues: make(map[string]int, len(qs))}
	for _, q := range qs {
		ids, err := a.Queue.IDs(q)
		if err != nil {
			return nil, err
		}
		out.Queues[q] = len(ids)
		out.Total += len(ids)
	}
	return out, nil
}

// IsBadRequest reports whether err is an error of the request itself (a
// bad filter, an unknown action), not of the queue.
func IsBadRequest(err error) bool {
	var bad badRequest
	return errors.As(err, &bad)
}

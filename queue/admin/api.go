package admin

import (
	"context"
	"io"
	"time"

	"github.com/mtakit/mtakit/queue"
)

// Queue is what the API needs of the queue. *queue.Admin is one, over any
// queue.Store (a JetStream cluster's too), and *queue.Spool; each method
// must be safe while the scheduler runs, and the changes must wait for a
// delivery attempt under way (see the methods of queue.Admin).
type Queue interface {
	Queues() ([]string, error)
	IDs(q string) ([]string, error)
	List(q string) ([]queue.Entry, error)
	Show(id string) (*queue.Item, error)
	ReadMessage(id string) (io.ReadCloser, error)
	Requeue(ctx context.Context, id string) error
	Hold(ctx context.Context, id string) error
	Release(ctx context.Context, id string) error
	Bounce(ctx context.Context, id string) error
	Delete(ctx context.Context, id string) error
}

var (
	_ Queue = (*queue.Spool)(nil)
	_ Queue = (*queue.Admin)(nil)
)

// Summary is one message in a list (GET /v1/messages).
type Summary struct {
	ID    string `json:"id"`
	Queue string `json:"queue"`
	// From is the envelope sender, "" for the null sender.
	From        string    `json:"from"`
	Rcpts       []string  `json:"rcpts"`
	Size        int64     `json:"size"`
	Received    time.Time `json:"received"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	// Error is set, and the fields above but ID and Queue are zero, when
	// the envelope cannot be read.
	Error string `json:"error,omitempty"`
}

// Listing is a page of a list (GET /v1/messages).
type Listing struct {
	// Total counts the messages that match the filter, on every page.
	Total int `json:"total"`
	// Offset is the place of Messages[0] among them.
	Offset   int       `json:"offset"`
	Messages []Summary `json:"messages"`
	// Next is the offset of the next page; absent on the last.
	Next int `json:"next,omitempty"`
}

// Detail is one message (GET /v1/messages/{id}).
type Detail struct {
	ID    string `json:"id"`
	Queue string `json:"queue"`
	// Envelope is the queue's record of the message: sender, recipients
	// with their state and last reply, client, attempts, last error (see
	// queue.Envelope for the fields; "head" and "body_off" are left out:
	// Header has the header as delivered).
	Envelope *queue.Envelope `json:"envelope"`
	// Header holds the header fields as delivered (the postq rules'
	// edits applied), each as written, unfolded lines joined.
	Header []string `json:"header"`
}

// Counts is the number of messages per queue (GET /v1/counts).
type Counts struct {
	// Queues maps each queue (those of queue.Spool.Queues) to its count.
	Queues map[string]int `json:"queues"`
	Total  int            `json:"total"`
}

// Filter selects messages (query parameters of GET /v1/messages, and the
// filter of a batch). The zero Filter selects every message.
type Filter struct {
	// Queue: only this queue ("deferred", "quarantine/dmarc").
	Queue string `json:"queue,omitempty"`
	// Sender: the envelope sender contains this, case-insensitively
	// ("@example.org"); "<>" selects the null sender.
	Sender string `json:"sender,omitempty"`
	// Recipient: a recipient contains this, case-insensitively.
	Recipient string `json:"recipient,omitempty"`
	// MinAge, MaxAge: received at least, at most this long ago (Go
	// durations: "90m", "2h"); empty: no bound.
	MinAge string `json:"min_age,omitempty"`
	MaxAge string `json:"max_age,omitempty"`
}

// Batch is the request of an action on several messages (POST
// /v1/batch/{action}): the messages IDs names, or those Filter selects
// (a Filter, even empty, is required when IDs is empty, so that an empty
// request never means every message by mistake).
type Batch struct {
	IDs    []string `json:"ids,omitempty"`
	Filter *Filter  `json:"filter,omitempty"`
}

// Result is the outcome of an action on one message; Error is set when
// it failed.
type Result struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	Error  string `json:"error,omitempty"`
}

// Results is the response of a batch (POST /v1/batch/{action}), one
// Result per message, in order; Failed counts those with an Error.
type Results struct {
	Results []Result `json:"results"`
	Failed  int      `json:"failed"`
}

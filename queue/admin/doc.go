// Package admin is the queue's admin API: an http.Handler serving JSON,
// for operators' tools (the queue command of examples/doe-family) to list,
// inspect, hold, release, requeue, bounce and delete queued messages of a
// running server, while its scheduler runs.
//
// Handler serves it on any listener an embedder chooses; Listen opens the
// usual ones: a Unix socket of mode 0600 (no token: the file's permission
// is the access control), and, when asked, a TCP listener that requires a
// bearer token and is loopback-only unless Config.AllowRemote is set.
//
// The handler works on a Queue, a small interface of this package that
// *queue.Spool satisfies; every change goes through the spool's methods,
// which take the message's lock (waiting for a delivery attempt under way)
// and are durable when they return.
//
// # Endpoints
//
// Every response is JSON (but the raw message), and every error a status
// 4xx or 5xx with the body {"error": "text"}: 400 for a bad request (a bad
// filter, ID or body), 401 without the token (TCP), 404 for an unknown
// message or endpoint, 409 when the message's queue does not allow the
// action (releasing a deferred message, holding a held one), 500 for a
// failure of the queue, 503 when the request was cancelled while waiting
// for the message.
//
//	GET /v1/messages?queue=&sender=&recipient=&min_age=&max_age=&offset=&limit=
//
// lists the messages a Filter selects (the query parameters are its
// fields: queue "deferred" or "quarantine/dmarc"; sender and recipient
// match addresses containing the text, case-insensitively, "<>" being the
// null sender; min_age and max_age bound the time since arrival, as Go
// durations "90m", "2h"), queue by queue, oldest first, in pages of limit
// (default 100, at most 1000) from offset (default 0). The response is a
// Listing:
//
//	{"total": 2, "offset": 0, "next": 1,        // next: absent on the last page
//	 "messages": [{"id": "33n1...", "queue": "deferred", "from": "a@example.org",
//	   "rcpts": ["b@example.com"], "size": 1234, "received": "2026-12-04T18:07:21Z",
//	   "attempts": 2, "next_attempt": "...", "last_error": "b@example.com: 451 4.4.1 ..."}]}
//
// A message whose envelope cannot be read is listed with "error" set.
// Each request reads the envelopes of every message in the queues it looks
// at (the pages are cut after filtering): on a queue of a hundred thousand
// messages, filter by queue.
//
//	GET /v1/messages/{id}
//
// shows one message, a Detail: its queue, the envelope as the queue keeps
// it (queue.Envelope: sender, parameters, recipients with state, last
// reply and DSN mark, client, attempts, last error) and the header fields
// as delivered, one string each:
//
//	{"id": "33n1...", "queue": "quarantine/dmarc",
//	 "envelope": {"v": 2, "id": "33n1...", "from": {...}, "rcpts": [{"addr": {...},
//	   "state": "pending", "reply": {"Code": 451, ...}}], ...},
//	 "header": ["Received: from ...", "Subject: hello"]}
//
//	GET /v1/messages/{id}/raw
//
// returns the message itself as delivered (Content-Type message/rfc822).
//
//	POST /v1/messages/{id}/release    a held or quarantined message goes on to delivery
//	POST /v1/messages/{id}/requeue    a deferred (or dead) message is tried again now
//	POST /v1/messages/{id}/hold       kept in the hold queue, never delivered until released
//	POST /v1/messages/{id}/bounce     returned to its sender in a DSN, then deleted
//	POST /v1/messages/{id}/delete     deleted without a word to anyone
//	DELETE /v1/messages/{id}          the same
//
// act on one message (see queue.Spool's Release, Requeue, Hold, Bounce and
// Delete) and answer a Result, {"id": "33n1...", "action": "hold"}, with
// "error" set (and the status above) when it failed. Release does not run
// the postq rules again: a message a rule quarantined is delivered as it
// is. Bounce queues the DSN through the scheduler (at once while it runs).
//
//	POST /v1/batch/{action}    body {"ids": ["id1", "id2"]} or {"filter": {"queue": "deferred", ...}}
//
// acts on several messages: the IDs given, or those a Filter (the fields
// of the list's query, in JSON) selects; {"filter": {}} selects every
// message, and a request with neither is refused. It answers Results, one
// Result per message in order and the number that failed:
//
//	{"results": [{"id": "id1", "action": "hold"}, {"id": "id2", "action": "hold",
//	  "error": "queue: no such message: id2"}], "failed": 1}
//
//	GET /v1/counts
//
// counts the messages of each queue (quarantines included), as Counts:
//
//	{"queues": {"working": 0, "deliver": 0, "deferred": 3, "hold": 1, "dead": 0,
//	  "corrupt": 0, "quarantine/dmarc": 2}, "total": 6}
//
// # Configuration and logging
//
// Handler is configured by its fields (Queue, Token, Logger), Listen by a
// Config; neither may change once in use, and each zero value is
// documented. Logging goes to the Logger field of Handler or Config: a
// line per change made (INFO) or refused (WARN), with the message's id;
// nil means slog.Default().
package admin

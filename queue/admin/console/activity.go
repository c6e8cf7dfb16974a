package console

import (
	"context"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// The chart's periods: 144 of 10 minutes, the last 24 hours.
const (
	period  = 10 * time.Minute
	periods = 144
	// hourPeriods is how many periods make "the last hour" of the top
	// lists: the current one and the five before it.
	hourPeriods = 6
	// maxKeys bounds the rules and clients counted per period; more are
	// counted under "(other)".
	maxKeys = 1000
	// defaultLogSize is Activity.LogSize's zero value.
	defaultLogSize = 2000
	// idMemory is how many queue IDs the log remembers the client and
	// sender of, for the lines of their later results.
	idMemory = 4096
)

// Series names the counters of the chart, in order.
var seriesNames = [...]string{"accepted", "refused", "delivered", "deferred", "bounced", "quarantined"}

// Indexes into a period's counters.
const (
	cAccepted = iota
	cRefused
	cDelivered
	cDeferred
	cBounced
	cQuarantined
	nCounters
)

// Activity records what the server did, in memory, for the console's
// overview and log pages: counters per 10 minutes for the last 24 hours
// (messages accepted and refused, recipients delivered, deferred and
// bounced, quarantine decisions), the rules that refused and the clients
// that sent in the last hour, and a ring of recent decisions.
//
// It is fed the way the metrics of mtakit/policy/metrics are: it is a
// smtp.Events, a queue.Events and a chain observer (Observe), so it can be
// mtakit.Server.Events, or be called by an Events of one's own beside a
// *metrics.Metrics. The log lines come from the server's log: wrap its
// handler with LogHandler (the "queue: result" lines, the SMTP refusals).
//
// What is counted:
//
//   - accepted: messages answered 2xx after DATA (smtp.Events);
//   - refused: messages answered 4xx or 5xx after DATA, and the connect,
//     HELO, MAIL and RCPT commands a rule denied (each once);
//   - delivered, deferred, bounced: each recipient a transport was asked
//     to deliver to, by its reply: 2xx, 4xx, 5xx (queue.Events);
//   - quarantined: each quarantine verdict of a rule (the observer).
//
// Set LogSize before use, and do not change it after. An Activity is safe
// for concurrent use; its zero value is ready.
type Activity struct {
	// LogSize is the number of log lines kept; zero means 2000.
	LogSize int

	now func() time.Time // for tests; nil: time.Now

	mu      sync.Mutex
	ring    [periods]slot
	log     []LogLine // a ring of at most LogSize lines
	logNext int       // where the next line goes once log is full
	ids     map[string]idFacts
	idOrder []string // FIFO of ids, at most idMemory
	idNext  int
}

// slot is one period's counts.
type slot struct {
	n       int64 // the period's number (Unix time / 10 minutes); 0: empty
	counts  [nCounters]int
	rules   map[string]int // refusals by rule
	clients map[string]int // messages queued by client address
}

// idFacts is what the log remembers of a queue ID.
type idFacts struct{ client, from string }

// LogLine is one decision about a message and a recipient, as the log
// page shows it.
type LogLine struct {
	Time time.Time
	// ID is the queue ID ("" when the refusal came before MAIL).
	ID string
	// Client is the client's IP address, when known.
	Client string
	From   string
	To     string
	// Status: delivered, deferred, bounced, expired, quarantined (the
	// "queue: result" lines), or refused (an SMTP refusal).
	Status string
	// Rule is the rule that refused (SMTP refusals).
	Rule string
	// Detail is the reply, the relay or the quarantine queue.
	Detail string
}

func (a *Activity) clock() time.Time {
	if a.now != nil {
		return a.now()
	}
	return time.Now()
}

// slotLocked returns the slot of the current period, cleared when it held
// an older one. a.mu held.
func (a *Activity) slotLocked() *slot {
	n := a.clock().Unix() / int64(period/time.Second)
	s := &a.ring[n%periods]
	if s.n != n {
		*s = slot{n: n}
	}
	return s
}

func (a *Activity) count(c int) {
	a.mu.Lock()
	a.slotLocked().counts[c]++
	a.mu.Unlock()
}

func bump(m *map[string]int, k string) {
	if *m == nil {
		*m = make(map[string]int)
	}
	if _, ok := (*m)[k]; !ok && len(*m) >= maxKeys {
		k = "(other)"
	}
	(*m)[k]++
}

// Connected implements smtp.Events (not counted).
func (a *Activity) Connected(listener string, admitted bool) {}

// Disconnected implements smtp.Events (not counted).
func (a *Activity) Disconnected(listener string) {}

// TLSHandshake implements smtp.Events (not counted).
func (a *Activity) TLSHandshake(listener string, err error) {}

// AuthAttempted implements smtp.Events (not counted).
func (a *Activity) AuthAttempted(listener string, code int) {}

// MessageReceived implements smtp.Events: a message accepted (2xx) or
// refused.
func (a *Activity) MessageReceived(listener string, code int, size int64) {
	switch {
	case code >= 200 && code < 300:
		a.count(cAccepted)
	case code >= 400:
		a.count(cRefused)
	}
}

// DeliveryAttempted implements queue.Events: a recipient delivered,
// deferred or bounced.
func (a *Activity) DeliveryAttempted(transport string, reply policy.Reply, sinceArrival time.Duration) {
	switch {
	case reply.Code >= 200 && reply.Code < 300:
		a.count(cDelivered)
	case reply.Permanent():
		a.count(cBounced)
	default:
		a.count(cDeferred)
	}
}

// DSNQueued implements queue.Events (not counted).
func (a *Activity) DSNQueued(action string) {}

// SpoolCommitted implements queue.Events (not counted).
func (a *Activity) SpoolCommitted(ops int) {}

// Observe records a rule's decision; set it as policy.Chain.Observer, or
// call it from the observer there. Denials count for their rule (and as
// refusals before DATA: a refused message is counted by MessageReceived),
// quarantine verdicts as quarantined.
func (a *Activity) Observe(d policy.Decision) {
	switch d.Verdict.Kind {
	case policy.KindDeny:
		a.mu.Lock()
		s := a.slotLocked()
		bump(&s.rules, d.Rule)
		switch d.Stage {
		case policy.StageConnect, policy.StageHelo, policy.StageMail, policy.StageRcpt:
			s.counts[cRefused]++
		}
		a.mu.Unlock()
	case policy.KindQuarantine:
		a.count(cQuarantined)
	}
}

// Chart is the counters of the last 24 hours, per 10 minutes.
type Chart struct {
	// Start is the beginning of the first period; the last one is the
	// current period, under way.
	Start time.Time
	// Series holds, for each counter (accepted, refused, delivered,
	// deferred, bounced, quarantined), its 144 counts, oldest first.
	Series []Series
}

// Series is one counter of the chart.
type Series struct {
	Name   string
	Counts []int
	Total  int
}

// Chart returns the counters of the last 24 hours.
func (a *Activity) Chart() Chart {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := a.clock().Unix() / int64(period/time.Second)
	first := cur - periods + 1
	c := Chart{Start: time.Unix(first*int64(period/time.Second), 0)}
	for i, name := range seriesNames {
		s := Series{Name: name, Counts: make([]int, periods)}
		for j := range periods {
			n := first + int64(j)
			if sl := &a.ring[n%periods]; sl.n == n {
				s.Counts[j] = sl.counts[i]
				s.Total += sl.counts[i]
			}
		}
		c.Series = append(c.Series, s)
	}
	return c
}

// Count is a name and its count, in a top list.
type Count struct {
	Name  string
	Count int
}

// TopRules returns the rules that refused most in the last hour (the
// current 10 minutes and the 50 before), at most n, most first.
func (a *Activity) TopRules(n int) []Count {
	return a.top(n, func(s *slot) map[string]int { return s.rules })
}

// TopClients returns the client addresses that sent the most messages
// (queued) in the last hour, at most n, most first. It needs LogHandler.
func (a *Activity) TopClients(n int) []Count {
	return a.top(n, func(s *slot) map[string]int { return s.clients })
}

func (a *Activity) top(n int, of func(*slot) map[string]int) []Count {
	a.mu.Lock()
	sum := map[string]int{}
	cur := a.clock().Unix() / int64(period/time.Second)
	for k := cur - hourPeriods + 1; k <= cur; k++ {
		if s := &a.ring[k%periods]; s.n == k {
			for name, c := range of(s) {
				sum[name] += c
			}
		}
	}
	a.mu.Unlock()
	out := make([]Count, 0, len(sum))
	for name, c := range sum {
		out = append(out, Count{name, c})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Name < out[j].Name
	})
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// LogFilter selects log lines; its zero value selects all.
type LogFilter struct {
	// Address: the sender or the recipient contains it,
	// case-insensitively.
	Address string
	// Client: the client's IP address is it, or starts with it
	// ("192.0.2.").
	Client string
	// ID: the queue ID is it.
	ID string
}

// Log returns the recorded lines f selects, newest first, at most n.
func (a *Activity) Log(f LogFilter, n int) []LogLine {
	addr := strings.ToLower(strings.TrimSpace(f.Address))
	client, id := strings.TrimSpace(f.Client), strings.TrimSpace(f.ID)
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []LogLine
	size := len(a.log)
	for i := range size {
		// Newest first: the line before logNext, going back.
		l := a.log[(a.logNext-1-i+2*size)%size]
		if addr != "" && !strings.Contains(strings.ToLower(l.From), addr) && !strings.Contains(strings.ToLower(l.To), addr) {
			continue
		}
		if client != "" && !strings.HasPrefix(l.Client, client) {
			continue
		}
		if id != "" && l.ID != id {
			continue
		}
		out = append(out, l)
		if len(out) >= n {
			break
		}
	}
	return out
}

func (a *Activity) logSize() int {
	if a.LogSize > 0 {
		return a.LogSize
	}
	return defaultLogSize
}

// addLine appends l to the ring. a.mu held.
func (a *Activity) addLine(l LogLine) {
	if len(a.log) < a.logSize() {
		a.log = append(a.log, l)
		a.logNext = len(a.log) % a.logSize()
		return
	}
	a.log[a.logNext] = l
	a.logNext = (a.logNext + 1) % len(a.log)
}

// remember notes the client and sender of a queue ID. a.mu held.
func (a *Activity) remember(id string, f idFacts) {
	if id == "" {
		return
	}
	if a.ids == nil {
		a.ids = make(map[string]idFacts)
	}
	if old, ok := a.ids[id]; ok {
		if f.client == "" {
			f.client = old.client
		}
		if f.from == "" {
			f.from = old.from
		}
		a.ids[id] = f
		return
	}
	if len(a.idOrder) < idMemory {
		a.idOrder = append(a.idOrder, id)
	} else {
		delete(a.ids, a.idOrder[a.idNext])
		a.idOrder[a.idNext] = id
		a.idNext = (a.idNext + 1) % idMemory
	}
	a.ids[id] = f
}

// LogHandler returns a slog.Handler that passes every record on to next
// and records the decisions among them: the queue's "queue: result" lines
// and the SMTP server's refusals (connect, MAIL, RCPT, DATA), and the
// clients of queued messages for TopClients. Give the server a logger
// made with it: slog.New(activity.LogHandler(h)). INFO records reach it
// whatever next's level.
func (a *Activity) LogHandler(next slog.Handler) slog.Handler {
	return &tapHandler{a: a, next: next}
}

// tapHandler is LogHandler's handler.
type tapHandler struct {
	a       *Activity
	next    slog.Handler
	attrs   []slog.Attr // from WithAttrs, outside any group
	grouped bool        // WithGroup was called: attrs of records are not ours
}

func (h *tapHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *tapHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	if !h.grouped {
		c.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	}
	return &c
}

func (h *tapHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	c.grouped = true
	return &c
}

// watched are the messages of the records the tap reads.
func watched(msg string) bool {
	switch msg {
	case "queue: result", "mail", "rcpt", "preq", "queued", "connection refused by rule", "connection refused: too many connections":
		return true
	}
	return strings.HasPrefix(msg, "message refused")
}

func (h *tapHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo && !h.grouped && watched(r.Message) {
		h.record(r)
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

// record reads a watched record.
func (h *tapHandler) record(r slog.Record) {
	get := map[string]string{}
	add := func(at slog.Attr) bool {
		switch at.Key {
		case "id", "from", "to", "status", "relay", "reply", "queue", "rule", "verdict", "remote":
			get[at.Key] = at.Value.String()
		}
		return true
	}
	for _, at := range h.attrs {
		add(at)
	}
	r.Attrs(add)
	client := ""
	if rem := get["remote"]; rem != "" {
		if ap, err := netip.ParseAddrPort(rem); err == nil {
			client = ap.Addr().Unmap().String()
		} else if ad, err := netip.ParseAddr(rem); err == nil {
			client = ad.Unmap().String()
		}
	}
	reply, denied := strings.CutPrefix(get["verdict"], "deny(")
	reply = strings.TrimSuffix(reply, ")")
	a := h.a
	a.mu.Lock()
	defer a.mu.Unlock()
	id := get["id"]
	known := a.ids[id]
	if client == "" {
		client = known.client
	}
	line := LogLine{Time: r.Time, ID: id, Client: client, From: get["from"], To: get["to"], Rule: get["rule"]}
	if line.From == "" {
		line.From = known.from
	}
	switch r.Message {
	case "queue: result":
		line.Status = get["status"]
		line.Detail = get["reply"]
		if q := get["queue"]; q != "" {
			line.Detail = q
		} else if line.Detail == "" {
			line.Detail = get["relay"]
		}
	case "queued":
		a.remember(id, idFacts{client: client, from: get["from"]})
		if client != "" {
			bump(&a.slotLocked().clients, client)
		}
		return
	case "mail":
		a.remember(id, idFacts{client: client, from: get["from"]})
		if !denied {
			return
		}
		line.Status, line.Detail = "refused", reply
	case "rcpt", "preq":
		if !denied {
			return
		}
		line.Status, line.Detail = "refused", reply
	default: // connection refusals, messages refused by the SMTP server
		line.Status, line.Detail = "refused", r.Message
		if rep := get["reply"]; rep != "" {
			line.Detail = rep
		}
	}
	a.addLine(line)
}

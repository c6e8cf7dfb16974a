package main

// The queue command (doe-family queue list|show|release|requeue|hold|
// delete|bounce|count) and the admin socket the server serves it on.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/admin"
	"github.com/mtakit/mtakit/queue/journal"
)

// adminSocket returns the admin socket's path: -admin, or admin.sock in
// the -data directory.
func adminSocket(flagValue, dataDir string) string {
	if flagValue != "" {
		return flagValue
	}
	return filepath.Join(dataDir, "admin.sock")
}

// readToken reads the bearer token of -admin-token-file.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("-admin-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("-admin-token-file: %s is empty", path)
	}
	return tok, nil
}

// adminQueue is the queue as the admin API and the console see it: the
// spool, or the admin operations over the JetStream store, which see the
// whole cluster's queue; nil when the store cannot be administered.
func (s *server) adminQueue() admin.Queue {
	if q, ok := s.mta.Store.(admin.Queue); ok {
		return q
	}
	if st, ok := s.mta.Store.(queue.Store); ok {
		return &queue.Admin{Store: st}
	}
	return nil
}

// serveAdmin serves the queue's admin API on the admin socket (unless
// -admin is "off") and on -admin-addr, until ctx ends or stop is called;
// stop waits for it to close.
func (s *server) serveAdmin(ctx context.Context, stdout io.Writer) (stop func(), err error) {
	q := s.adminQueue()
	if q == nil {
		return func() {}, nil
	}
	cfg := admin.Config{Queue: q, Addr: s.cfg.adminAddr, Logger: s.log}
	if s.cfg.adminSocket != "off" {
		cfg.Socket = adminSocket(s.cfg.adminSocket, s.cfg.dataDir)
		if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o750); err != nil {
			return nil, fmt.Errorf("-admin: %w", err)
		}
	}
	if cfg.Addr != "" {
		if s.cfg.adminTokenFile == "" {
			return nil, errors.New("-admin-addr needs -admin-token-file")
		}
		if cfg.Token, err = readToken(s.cfg.adminTokenFile); err != nil {
			return nil, err
		}
	}
	if cfg.Socket == "" && cfg.Addr == "" {
		return func() {}, nil
	}
	srv, err := admin.Listen(cfg)
	if err != nil {
		return nil, fmt.Errorf("queue admin: %w", err)
	}
	if cfg.Socket != "" {
		fmt.Fprintf(stdout, "queue admin listening on %s\n", cfg.Socket)
	}
	if a := srv.Addr(); a != nil {
		fmt.Fprintf(stdout, "queue admin listening on %s\n", a)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx); err != nil {
			s.log.Error("queue admin stopped", "error", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}

// queueOpts is the command line of the queue command.
type queueOpts struct {
	spool, dataDir, socket, addr, tokenFile string
	json, all, raw                          bool
	filter                                  admin.Filter
	ids                                     []string
}

const queueUsage = `usage: doe-family queue COMMAND [flags] [ID...]

Commands:
  list                    the messages (filters: -queue -sender -recipient -min-age -max-age)
  show ID...              envelope, recipients and header (-raw: the message itself)
  count                   messages per queue
  release ID... | -all    a held or quarantined message goes on to delivery (postq rules not run again)
  requeue ID... | -all    a deferred (or dead) message is tried again now
  hold ID... | -all       kept in the hold queue, never delivered until released
  delete ID... | -all     deleted
  bounce ID... | -all     returned to its sender in a DSN, then deleted

It talks to the running server's admin socket (-admin, default <-data>/admin.sock)
or to -admin-addr with the token of -admin-token-file. When no server answers on
the socket, it works on the spool (-spool) directly, as postsuper does, and says so
(on the journal there, when the server ran with -queue journal).
With -all, the filters select the messages acted on.

Flags:
`

// queueCommand runs "doe-family queue ...".
func queueCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("doe-family queue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, queueUsage)
		fs.PrintDefaults()
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fs.Usage()
		return errors.New("queue: a command is needed")
	}
	cmd := args[0]
	o := &queueOpts{}
	fs.StringVar(&o.spool, "spool", "./data/queue", "queue directory (when no server runs)")
	fs.StringVar(&o.dataDir, "data", "./data", "the server's -data directory, where its admin socket is")
	fs.StringVar(&o.socket, "admin", "", "the server's admin socket (default <-data>/admin.sock)")
	fs.StringVar(&o.addr, "admin-addr", "", "the server's admin TCP address (host:port), instead of the socket")
	fs.StringVar(&o.tokenFile, "admin-token-file", "", "file holding the bearer token of -admin-addr")
	fs.BoolVar(&o.json, "json", false, "print JSON (the admin API's responses)")
	fs.BoolVar(&o.all, "all", false, "act on every message the filters select")
	fs.BoolVar(&o.raw, "raw", false, "show: print the message itself")
	fs.StringVar(&o.filter.Queue, "queue", "", "filter: this queue only (deferred, hold, quarantine/dmarc...)")
	fs.StringVar(&o.filter.Sender, "sender", "", "filter: sender contains this (<> for the null sender)")
	fs.StringVar(&o.filter.Recipient, "recipient", "", "filter: a recipient contains this")
	fs.StringVar(&o.filter.MinAge, "min-age", "", "filter: received at least this long ago (90m, 2h)")
	fs.StringVar(&o.filter.MaxAge, "max-age", "", "filter: received at most this long ago")
	// Flags and IDs in any order.
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		o.ids = append(o.ids, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	filtered := o.filter != (admin.Filter{})
	switch cmd {
	case "list", "count":
		if len(o.ids) > 0 || o.all {
			return fmt.Errorf("queue %s: takes no IDs nor -all (use the filters)", cmd)
		}
		if cmd == "count" && filtered {
			return errors.New("queue count: takes no filters")
		}
	case "show":
		if len(o.ids) == 0 || o.all || filtered {
			return errors.New("queue show: give the IDs of the messages")
		}
	case "release", "requeue", "hold", "delete", "bounce":
		switch {
		case len(o.ids) > 0 && o.all:
			return fmt.Errorf("queue %s: IDs or -all, not both", cmd)
		case len(o.ids) == 0 && !o.all:
			return fmt.Errorf("queue %s: give the IDs of the messages, or -all (with filters)", cmd)
		case filtered && !o.all:
			return fmt.Errorf("queue %s: the filters select messages with -all only", cmd)
		}
	default:
		fs.Usage()
		return fmt.Errorf("queue: unknown command %q", cmd)
	}

	c, closeQueue, err := dialQueue(o, stderr)
	if err != nil {
		return err
	}
	defer closeQueue()
	switch cmd {
	case "list":
		return c.list(ctx, o, stdout)
	case "count":
		return c.count(ctx, o, stdout)
	case "show":
		return c.show(ctx, o, stdout)
	}
	err = c.act(ctx, cmd, o, stdout, stderr)
	if c.offline && err == nil {
		switch cmd {
		case "bounce":
			fmt.Fprintln(stderr, "doe-family queue: the DSN goes out when the server next starts")
		case "release", "requeue":
			fmt.Fprintln(stderr, "doe-family queue: delivery happens when the server next starts")
		}
	}
	return err
}

// queueClient speaks the admin API: to a running server, or in process
// to the spool (offline).
type queueClient struct {
	http    *http.Client
	base    string
	token   string
	offline bool
}

// dialQueue connects to the running server, or opens the spool when none
// answers on the socket.
func dialQueue(o *queueOpts, stderr io.Writer) (*queueClient, func(), error) {
	if o.addr != "" {
		if o.tokenFile == "" {
			return nil, nil, errors.New("-admin-addr needs -admin-token-file")
		}
		tok, err := readToken(o.tokenFile)
		if err != nil {
			return nil, nil, err
		}
		return &queueClient{http: &http.Client{}, base: "http://" + o.addr, token: tok}, func() {}, nil
	}
	sock := adminSocket(o.socket, o.dataDir)
	conn, dialErr := net.DialTimeout("unix", sock, 5*time.Second)
	if dialErr == nil {
		conn.Close()
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}
		return &queueClient{http: &http.Client{Transport: tr}, base: "http://admin"}, tr.CloseIdleConnections, nil
	}
	// No server answers: the spool itself (or the journal of -queue
	// journal there), unless a server holds it.
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var (
		st  admin.Queue
		cl  func() error
		err error
	)
	if _, jerr := os.Stat(filepath.Join(o.spool, journal.LockFile)); jerr == nil {
		var j *journal.Store
		if j, err = journal.Open(context.Background(), journal.Config{Dir: o.spool, Logger: log}); err == nil {
			st, cl = &queue.Admin{Store: j}, j.Close
		}
	} else if _, serr := os.Stat(filepath.Join(o.spool, "lock")); serr != nil {
		return nil, nil, fmt.Errorf("no server answers on %s (%v), and there is no spool at %s (-spool)", sock, dialErr, o.spool)
	} else {
		var sp *queue.Spool
		if sp, err = queue.Open(o.spool, queue.SpoolConfig{Logger: log}); err == nil {
			st, cl = sp, sp.Close
		}
	}
	if errors.Is(err, queue.ErrLocked) || errors.Is(err, journal.ErrLocked) {
		return nil, nil, fmt.Errorf("a server holds the spool %s, but its admin socket %s does not answer (%v): give its -admin path or -data", o.spool, sock, dialErr)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("-spool: %w", err)
	}
	fmt.Fprintf(stderr, "doe-family queue: no server answers on %s; working on the spool %s directly\n", sock, o.spool)
	// The outcome of each action is printed: the handler's log lines
	// would say it twice.
	h := &admin.Handler{Queue: st, Logger: slog.New(slog.DiscardHandler)}
	return &queueClient{http: &http.Client{Transport: handlerTransport{h}}, base: "http://spool", offline: true}, func() { cl() }, nil
}

// handlerTransport serves requests with a handler in this process.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, r)
	return rec.Result(), nil
}

// call makes one request of the API and decodes its JSON answer into out;
// raw (when not nil) gets the body as it is instead. An error status is
// an error with the API's message.
func (c *queueClient) call(ctx context.Context, method, path string, body, out any, raw io.Writer) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		json.NewDecoder(resp.Body).Decode(&e)
		if e.Error == "" {
			e.Error = resp.Status
		}
		return fmt.Errorf("%s (%d)", e.Error, resp.StatusCode)
	}
	if raw != nil {
		_, err = io.Copy(raw, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func filterQuery(f admin.Filter) url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"queue": f.Queue, "sender": f.Sender, "recipient": f.Recipient, "min_age": f.MinAge, "max_age": f.MaxAge} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

func (c *queueClient) list(ctx context.Context, o *queueOpts, stdout io.Writer) error {
	all := admin.Listing{Messages: []admin.Summary{}}
	v := filterQuery(o.filter)
	v.Set("limit", "1000")
	for next := 0; ; {
		v.Set("offset", fmt.Sprint(next))
		var page admin.Listing
		if err := c.call(ctx, "GET", "/v1/messages?"+v.Encode(), nil, &page, nil); err != nil {
			return err
		}
		all.Total = page.Total
		all.Messages = append(all.Messages, page.Messages...)
		if next = page.Next; next == 0 {
			break
		}
	}
	if o.json {
		return printJSON(stdout, all)
	}
	printList(stdout, all.Messages)
	return nil
}

// printList prints messages as postqueue -p does, with the queue of each.
func printList(w io.Writer, ms []admin.Summary) {
	if len(ms) == 0 {
		fmt.Fprintln(w, "Mail queue is empty")
		return
	}
	fmt.Fprintf(w, "%-22s %-18s %8s %-20s  %s\n", "-Queue ID-", "-Queue-", "--Size--", "----Arrival Time----", "-Sender/Recipient-------")
	var size int64
	pad := strings.Repeat(" ", 22+1+18+1+8+1+20+2)
	for _, m := range ms {
		if m.Error != "" {
			fmt.Fprintf(w, "%-22s %-18s %8s %-20s  (unreadable: %s)\n\n", m.ID, m.Queue, "?", "?", m.Error)
			continue
		}
		size += m.Size
		from := m.From
		if from == "" {
			from = "<>"
		}
		fmt.Fprintf(w, "%-22s %-18s %8d %-20s  %s\n", m.ID, m.Queue, m.Size, m.Received.Local().Format("Mon Jan _2 15:04:05"), from)
		if m.LastError != "" {
			fmt.Fprintf(w, "%s(%s)\n", pad, m.LastError)
		}
		for _, r := range m.Rcpts {
			fmt.Fprintf(w, "%s%s\n", pad, r)
		}
		fmt.Fprintln(w)
	}
	noun := "Requests"
	if len(ms) == 1 {
		noun = "Request"
	}
	fmt.Fprintf(w, "-- %d Kbytes in %d %s.\n", (size+1023)/1024, len(ms), noun)
}

func (c *queueClient) count(ctx context.Context, o *queueOpts, stdout io.Writer) error {
	var counts admin.Counts
	if err := c.call(ctx, "GET", "/v1/counts", nil, &counts, nil); err != nil {
		return err
	}
	if o.json {
		return printJSON(stdout, counts)
	}
	// The fixed queues in their order, then the quarantines.
	names := []string{queue.Working, queue.Deliver, queue.Deferred, queue.Hold, queue.Dead, queue.Corrupt}
	for q := range counts.Queues {
		if strings.HasPrefix(q, queue.QuarantinePrefix) {
			names = append(names, q)
		}
	}
	slices.Sort(names[6:])
	for _, q := range names {
		fmt.Fprintf(stdout, "%-24s %d\n", q, counts.Queues[q])
	}
	fmt.Fprintf(stdout, "%-24s %d\n", "total", counts.Total)
	return nil
}

func (c *queueClient) show(ctx context.Context, o *queueOpts, stdout io.Writer) error {
	var details []admin.Detail
	for _, id := range o.ids {
		p := "/v1/messages/" + url.PathEscape(id)
		if o.raw {
			if err := c.call(ctx, "GET", p+"/raw", nil, nil, stdout); err != nil {
				return fmt.Errorf("%s: %w", id, err)
			}
			continue
		}
		var d admin.Detail
		if err := c.call(ctx, "GET", p, nil, &d, nil); err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		if o.json {
			details = append(details, d)
			continue
		}
		printDetail(stdout, d)
	}
	if o.json && !o.raw {
		if len(details) == 1 {
			return printJSON(stdout, details[0])
		}
		return printJSON(stdout, details)
	}
	return nil
}

func printDetail(w io.Writer, d admin.Detail) {
	env := d.Envelope
	p := func(k, format string, a ...any) {
		fmt.Fprintf(w, "%-12s "+format+"\n", append([]any{k + ":"}, a...)...)
	}
	p("id", "%s", d.ID)
	p("queue", "%s", d.Queue)
	if env == nil {
		fmt.Fprintln(w)
		return
	}
	from := env.From.String()
	if from == "" {
		from = "<>"
	}
	p("from", "%s", from)
	p("received", "%s", env.Received.Local().Format(time.RFC1123Z))
	p("size", "%d", env.Size)
	cl := env.Client
	client := cl.Helo
	if cl.Remote != "" {
		client += " [" + cl.Remote + "]"
	}
	if cl.AuthUser != "" {
		client += " auth " + cl.AuthUser
	}
	p("client", "%s", client)
	attempts := fmt.Sprint(env.Attempts)
	if !env.NextAttempt.IsZero() && env.Attempts > 0 {
		attempts += ", next " + env.NextAttempt.Local().Format(time.RFC1123Z)
	}
	p("attempts", "%s", attempts)
	if env.LastError != "" {
		p("last error", "%s", env.LastError)
	}
	fmt.Fprintln(w, "recipients:")
	for _, r := range env.Rcpts {
		line := fmt.Sprintf("  %-40s %-9s", r.Addr.String(), r.State)
		if !r.Reply.IsZero() {
			line += " " + r.Reply.String()
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	fmt.Fprintln(w, "header:")
	for _, f := range d.Header {
		fmt.Fprintln(w, "  "+f)
	}
	fmt.Fprintln(w)
}

// pastTense names what an action did, for its report.
var pastTense = map[string]string{"release": "released", "requeue": "requeued", "hold": "held", "delete": "deleted", "bounce": "bounced"}

func (c *queueClient) act(ctx context.Context, action string, o *queueOpts, stdout, stderr io.Writer) error {
	b := admin.Batch{IDs: o.ids}
	if o.all {
		f := o.filter
		b = admin.Batch{Filter: &f}
	}
	var res admin.Results
	if err := c.call(ctx, "POST", "/v1/batch/"+action, b, &res, nil); err != nil {
		return err
	}
	if o.json {
		if err := printJSON(stdout, res); err != nil {
			return err
		}
	} else {
		for _, r := range res.Results {
			if r.Error != "" {
				fmt.Fprintf(stderr, "%s: %s\n", r.ID, r.Error)
				continue
			}
			fmt.Fprintf(stdout, "%s: %s\n", r.ID, pastTense[action])
		}
		if len(res.Results) == 0 {
			fmt.Fprintln(stderr, "doe-family queue: no message selected")
		}
	}
	if res.Failed > 0 {
		return fmt.Errorf("queue %s: %d of %d failed", action, res.Failed, len(res.Results))
	}
	return nil
}

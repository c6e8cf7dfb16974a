package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Config is one load run. Count and Duration both bound it: the run stops
// at whichever comes first.
type Config struct {
	Addr        string
	Conns       int           // concurrent connections
	Count       int           // messages in all
	PerConn     int           // messages per connection before it reconnects; 0: no limit
	Size        int           // message size in bytes, header included
	Duration    time.Duration // upper bound of the run
	StartTLS    bool
	ImplicitTLS bool
	TLSConfig   *tls.Config
	AuthUser    string // AUTH PLAIN when set
	AuthPass    string
	Helo        string
	From        string
	To          []string
	// Sources are local IP addresses the connections are made from, in
	// turn (connection i uses Sources[i%len]); empty: the system's choice.
	// Several loopback addresses (127.0.0.2, ...) get past a server's
	// per-client connection limit.
	Sources []string
	// DKIMSigner, when set, DKIM-signs the message (once: every message of
	// the run is the same) as DKIMSelector of the From address's domain,
	// so that a server that verifies DKIM has a signature to check.
	DKIMSigner   crypto.Signer
	DKIMSelector string
}

// Report is what a run measured.
type Report struct {
	Addr       string         `json:"addr"`
	Conns      int            `json:"conns"`
	Size       int            `json:"size"`
	Sent       int64          `json:"sent"`   // messages answered 250 after DATA
	Failed     int64          `json:"failed"` // messages that got an error
	Elapsed    float64        `json:"elapsed_s"`
	Rate       float64        `json:"msgs_per_s"`
	MBps       float64        `json:"mb_per_s"`
	P50        float64        `json:"latency_p50_ms"`
	P99        float64        `json:"latency_p99_ms"`
	Max        float64        `json:"latency_max_ms"`
	Errors     map[string]int `json:"errors,omitempty"` // reply or error text -> count
	latencies  []time.Duration
	errorsLock sync.Mutex
}

func (r *Report) addError(err error) {
	key := err.Error()
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		key = fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	}
	if len(key) > 120 {
		key = key[:120]
	}
	r.errorsLock.Lock()
	r.Errors[key]++
	r.errorsLock.Unlock()
}

// String formats the report for people.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "target %s, %d connections, %d-byte messages\n", r.Addr, r.Conns, r.Size)
	fmt.Fprintf(&b, "sent %d, failed %d in %.2fs: %.0f msg/s, %.2f MB/s\n", r.Sent, r.Failed, r.Elapsed, r.Rate, r.MBps)
	fmt.Fprintf(&b, "latency p50 %.2fms p99 %.2fms max %.2fms\n", r.P50, r.P99, r.Max)
	keys := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "error x%d: %s\n", r.Errors[k], k)
	}
	return b.String()
}

// Run sends the load and returns what it measured.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Conns <= 0 || cfg.Count <= 0 {
		return nil, errors.New("smtpload: connections and count must be positive")
	}
	for _, src := range cfg.Sources {
		if net.ParseIP(src) == nil {
			return nil, fmt.Errorf("smtpload: bad source address %q", src)
		}
	}
	if cfg.Duration <= 0 {
		cfg.Duration = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	body := makeBody(cfg)
	if cfg.DKIMSigner != nil {
		var err error
		if body, err = signBody(cfg, body); err != nil {
			return nil, err
		}
	}
	stuffed := dotStuffed(body)
	rep := &Report{Addr: cfg.Addr, Conns: cfg.Conns, Size: len(body), Errors: map[string]int{}}
	var next atomic.Int64
	lat := make([][]time.Duration, cfg.Conns)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < cfg.Conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			lat[i] = worker(ctx, cfg, i, body, stuffed, &next, rep)
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, l := range lat {
		rep.latencies = append(rep.latencies, l...)
	}
	rep.Elapsed = elapsed.Seconds()
	rep.Rate = float64(rep.Sent) / rep.Elapsed
	rep.MBps = float64(rep.Sent) * float64(len(body)) / rep.Elapsed / 1e6
	sort.Slice(rep.latencies, func(a, b int) bool { return rep.latencies[a] < rep.latencies[b] })
	if n := len(rep.latencies); n > 0 {
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		rep.P50 = ms(rep.latencies[n/2])
		rep.P99 = ms(rep.latencies[min(n-1, n*99/100)])
		rep.Max = ms(rep.latencies[n-1])
	}
	return rep, nil
}

// worker runs one connection at a time, reconnecting after errors or every
// PerConn messages, until the count is reached or ctx ends.
func worker(ctx context.Context, cfg Config, i int, body, stuffed []byte, next *atomic.Int64, rep *Report) []time.Duration {
	var lat []time.Duration
	var source string
	if len(cfg.Sources) > 0 {
		source = cfg.Sources[i%len(cfg.Sources)]
	}
	for ctx.Err() == nil {
		c, raw, stop, err := dial(ctx, cfg, source)
		if err != nil {
			if ctx.Err() != nil {
				return lat
			}
			if next.Add(1) > int64(cfg.Count) {
				return lat
			}
			rep.addError(err)
			atomic.AddInt64(&rep.Failed, 1)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		sentHere := 0
		for cfg.PerConn == 0 || sentHere < cfg.PerConn {
			if next.Add(1) > int64(cfg.Count) || ctx.Err() != nil {
				stop()
				c.Quit()
				return lat
			}
			t0 := time.Now()
			err := send(c, raw, cfg, body, stuffed)
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				rep.addError(err)
				atomic.AddInt64(&rep.Failed, 1)
				var se *smtp.SMTPError
				if !errors.As(err, &se) || se.Code == 421 {
					break // the connection is gone: reconnect
				}
				c.Reset()
				continue
			}
			lat = append(lat, time.Since(t0))
			atomic.AddInt64(&rep.Sent, 1)
			sentHere++
		}
		stop()
		c.Close()
	}
	return lat
}

// dial connects from source (if set) and greets; the returned stop func detaches the connection
// from ctx, whose end closes it so that no read outlives the run. raw is
// the connection itself when it has no TLS (nil with TLS).
func dial(ctx context.Context, cfg Config, source string) (c *smtp.Client, raw net.Conn, stop func() bool, err error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)} // checked by Run
	}
	conn, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, nil, nil, err
	}
	detach := context.AfterFunc(ctx, func() { conn.Close() })
	defer func() {
		if err != nil {
			detach()
			conn.Close()
		}
	}()
	switch {
	case cfg.ImplicitTLS:
		c = smtp.NewClient(tls.Client(conn, cfg.TLSConfig))
	case cfg.StartTLS:
		if c, err = smtp.NewClientStartTLS(conn, cfg.TLSConfig); err != nil {
			return nil, nil, nil, err
		}
	default:
		c, raw = smtp.NewClient(conn), conn
	}
	if err = c.Hello(cfg.Helo); err != nil {
		return nil, nil, nil, err
	}
	if cfg.AuthUser != "" {
		if err = c.Auth(sasl.NewPlainClient("", cfg.AuthUser, cfg.AuthPass)); err != nil {
			return nil, nil, nil, err
		}
	}
	return c, raw, detach, nil
}

// send sends one message. On a connection without TLS (raw not nil) the
// body goes out as dotStuffed made it once, and the DATA writer adds only
// the end of data: go-smtp's writer (textproto's DotWriter) stuffs a byte
// at a time, a cost of the load generator, which shares the cores with
// the server measured, that grows with the message (it was most of the
// generator's CPU at 100 KiB).
func send(c *smtp.Client, raw net.Conn, cfg Config, body, stuffed []byte) error {
	if err := c.Mail(cfg.From, nil); err != nil {
		return err
	}
	for _, to := range cfg.To {
		if err := c.Rcpt(to, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if raw != nil {
		_, err = raw.Write(stuffed)
	} else {
		_, err = w.Write(body)
	}
	if err != nil {
		return err
	}
	return w.Close()
}

// dotStuffed returns body as it goes on the wire after DATA (RFC 5321
// section 4.5.2: a dot doubled at the start of a line; LF alone made
// CRLF, as textproto's DotWriter does), without its last CRLF: the DATA
// writer's Close, to which nothing else was written, writes CRLF "." CRLF.
func dotStuffed(body []byte) []byte {
	var b bytes.Buffer
	w := textproto.NewWriter(bufio.NewWriter(&b))
	dw := w.DotWriter()
	dw.Write(body)
	dw.Close()
	out := b.Bytes()
	return out[:len(out)-len("\r\n.\r\n")]
}

// makeBody builds a CRLF message of about cfg.Size bytes: a header and
// 76-character lines of text.
func makeBody(cfg Config) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: smtpload\r\nDate: %s\r\nMessage-ID: <%d.smtpload@%s>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
		cfg.From, strings.Join(cfg.To, ">, <"), time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), cfg.Helo)
	line := strings.Repeat("abcdefghijklmnopqrstuvwxyz0123456789", 3)[:76] + "\r\n"
	for b.Len()+len(line) <= cfg.Size {
		b.WriteString(line)
	}
	if rest := cfg.Size - b.Len(); rest > 2 {
		b.WriteString(line[:rest-2] + "\r\n")
	}
	return []byte(b.String())
}

// signBody returns body with a DKIM-Signature field of cfg.DKIMSigner
// prepended, d= the domain of cfg.From.
func signBody(cfg Config, body []byte) ([]byte, error) {
	_, domain, ok := strings.Cut(cfg.From, "@")
	if !ok || domain == "" {
		return nil, fmt.Errorf("smtpload: DKIM signing needs a sender with a domain, not %q", cfg.From)
	}
	var out bytes.Buffer
	err := dkim.Sign(&out, bytes.NewReader(body), &dkim.SignOptions{
		Domain:                 domain,
		Selector:               cfg.DKIMSelector,
		Signer:                 cfg.DKIMSigner,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             []string{"From", "To", "Subject", "Date", "Message-ID"},
	})
	if err != nil {
		return nil, fmt.Errorf("smtpload: DKIM signing: %w", err)
	}
	return out.Bytes(), nil
}

package delegate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// ClamAV scans data with a clamd daemon over its INSTREAM protocol, for
// servers that run clamd without clamsmtpd. The zero value is not usable:
// set Address.
type ClamAV struct {
	// Network is "tcp" (default) or "unix".
	Network string
	// Address is clamd's host:port (TCPSocket/TCPAddr) or the path of its
	// LocalSocket.
	Address string
	// Timeout bounds one command, scan included. Default 2 minutes.
	Timeout time.Duration
	// ChunkSize is the size of the INSTREAM chunks. Default 64 KiB.
	ChunkSize int
	// FailOpen makes the rules of ScanRule and ClamAVRule let the message
	// go on unscanned (with a warning) when clamd fails; by default the
	// transaction gets 451 4.7.1.
	FailOpen bool
	// Logger receives the rules' logs; nil means slog.Default().
	Logger *slog.Logger
}

// ErrSizeLimit is returned by Scan when clamd refused the stream because it
// is longer than its StreamMaxLength.
var ErrSizeLimit = errors.New("delegate: clamd: INSTREAM size limit exceeded")

// ClamdError is an error reply of clamd ("... ERROR") or a reply that could
// not be understood.
type ClamdError struct{ Reply string }

func (e *ClamdError) Error() string { return "delegate: clamd replied " + fmt.Sprintf("%q", e.Reply) }

// maxReply bounds a clamd reply.
const maxReply = 4096

func (c *ClamAV) network() string {
	if c.Network == "" {
		return "tcp"
	}
	return c.Network
}

// dial connects to clamd under ctx bounded by c.Timeout; the returned stop
// function must be called when done.
func (c *ClamAV) dial(ctx context.Context) (net.Conn, context.Context, func(), error) {
	t := c.Timeout
	if t <= 0 {
		t = defaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	var d net.Dialer
	conn, err := d.DialContext(ctx, c.network(), c.Address)
	if err != nil {
		cancel()
		return nil, nil, nil, fmt.Errorf("delegate: clamd %s: %w", c.Address, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return conn, ctx, func() { stop(); conn.Close(); cancel() }, nil
}

// command sends a z-command and returns clamd's reply without its NUL.
func (c *ClamAV) command(ctx context.Context, cmd string) (string, error) {
	conn, _, done, err := c.dial(ctx)
	if err != nil {
		return "", err
	}
	defer done()
	if _, err := io.WriteString(conn, "z"+cmd+"\x00"); err != nil {
		return "", fmt.Errorf("delegate: clamd %s: %w", cmd, err)
	}
	reply, err := readReply(conn)
	if err != nil {
		return "", fmt.Errorf("delegate: clamd %s: %w", cmd, err)
	}
	return reply, nil
}

// Ping checks that clamd answers.
func (c *ClamAV) Ping(ctx context.Context) error {
	reply, err := c.command(ctx, "PING")
	if err != nil {
		return err
	}
	if reply != "PONG" {
		return &ClamdError{Reply: reply}
	}
	return nil
}

// Version returns clamd's version string ("ClamAV 1.4.6/...").
func (c *ClamAV) Version(ctx context.Context) (string, error) {
	return c.command(ctx, "VERSION")
}

// Scan streams r to clamd and returns the name of the virus found, or ""
// when the data is clean. Any failure (clamd unreachable, an ERROR reply,
// ErrSizeLimit, a timeout) is an error: the data was not scanned.
func (c *ClamAV) Scan(ctx context.Context, r io.Reader) (virus string, err error) {
	conn, ctx, done, err := c.dial(ctx)
	if err != nil {
		return "", err
	}
	defer done()
	werr := writeStream(conn, r, c.ChunkSize)
	if werr != nil && !isConnErr(werr) {
		return "", fmt.Errorf("delegate: clamd INSTREAM: %w", werr)
	}
	// On a connection error clamd may have stopped reading (size limit)
	// and said why: read its reply either way.
	reply, rerr := readReply(conn)
	if rerr != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("delegate: clamd INSTREAM: %w", ctx.Err())
		}
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			// The connection's deadline is the context's.
			return "", fmt.Errorf("delegate: clamd INSTREAM: %w", context.DeadlineExceeded)
		}
		return "", fmt.Errorf("delegate: clamd INSTREAM: %w", errors.Join(werr, rerr))
	}
	return parseReply(reply)
}

// writeStream writes the INSTREAM command, r as length-prefixed chunks,
// and the zero-length terminator.
func writeStream(w io.Writer, r io.Reader, chunk int) error {
	if chunk <= 0 {
		chunk = 64 << 10
	}
	bw := bufio.NewWriterSize(w, chunk+4)
	if _, err := bw.WriteString("zINSTREAM\x00"); err != nil {
		return err
	}
	buf := make([]byte, chunk)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			var l [4]byte
			binary.BigEndian.PutUint32(l[:], uint32(n))
			bw.Write(l[:])
			if _, werr := bw.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the data: %w", err)
		}
	}
	bw.Write([]byte{0, 0, 0, 0})
	return bw.Flush()
}

func isConnErr(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}

// readReply reads one reply, up to a NUL, a newline or the end of the
// connection, bounded by maxReply.
func readReply(r io.Reader) (string, error) {
	var buf []byte
	tmp := make([]byte, 512)
	for len(buf) <= maxReply {
		n, err := r.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if i := bytes.IndexAny(buf, "\x00\n"); i >= 0 {
			return string(buf[:i]), nil
		}
		if err == io.EOF && len(buf) > 0 {
			return string(buf), nil
		}
		if err != nil {
			return "", err
		}
	}
	return "", &ClamdError{Reply: string(buf[:64]) + "..."}
}

// parseReply interprets clamd's reply to INSTREAM (without its NUL):
// "stream: OK", "stream: <name> FOUND", "<text> ERROR", and
// "INSTREAM size limit exceeded. ERROR".
func parseReply(reply string) (virus string, err error) {
	s := strings.TrimRight(reply, "\x00\r\n \t")
	if strings.Contains(s, "size limit exceeded") {
		return "", ErrSizeLimit
	}
	// With IDSESSION replies start with "<id>: "; a plain INSTREAM reply
	// with "stream: ".
	if i := strings.Index(s, ": "); i > 0 && strings.Trim(s[:i], "0123456789") == "" {
		s = s[i+2:]
	}
	s = strings.TrimPrefix(s, "stream: ")
	switch {
	case s == "OK":
		return "", nil
	case strings.HasSuffix(s, " FOUND"):
		name := strings.TrimSpace(strings.TrimSuffix(s, " FOUND"))
		if name == "" || strings.ContainsAny(name, "\x00\r\n") {
			return "", &ClamdError{Reply: reply}
		}
		return name, nil
	}
	return "", &ClamdError{Reply: reply}
}

func (c *ClamAV) log() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// ScanRule returns a preq or postq rule that scans the whole message with
// clamd and returns the verdict of then, which receives the virus name
// ("" when clean). With then nil an infected message is refused with
// 554 5.7.1.
//
// When the scan fails the rule answers 451 4.7.1, or,
// with c.FailOpen, logs a warning and says Next.
func ScanRule(c *ClamAV, then func(ctx context.Context, tx *policy.Transaction, m *policy.Message, virus string) policy.Verdict) policy.MessageRule {
	return func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		virus, err := c.Scan(ctx, m.Reader())
		if err != nil {
			attrs := []any{slog.String("id", tx.ID), slog.Any("error", err)}
			if c.FailOpen {
				c.log().WarnContext(ctx, "clamd scan failed; fail-open: the message goes on unscanned", attrs...)
				return policy.Next()
			}
			return policy.Deny(replyUnavailable.Code, replyUnavailable.Enhanced, replyUnavailable.Text).WithErr(err)
		}
		if virus != "" {
			c.log().InfoContext(ctx, "virus found", slog.String("id", tx.ID), slog.String("virus", virus))
		}
		if then != nil {
			return then(ctx, tx, m, virus)
		}
		if virus != "" {
			return policy.Deny(554, "5.7.1", "Message contains a virus")
		}
		return policy.Next()
	}
}

// ClamAVRule is ScanRule with the common decision: an infected message goes
// to the quarantine queue (or, with quarantine "", is refused with
// 554 5.7.1); a clean one goes on (Next).
func ClamAVRule(c *ClamAV, quarantine string) policy.MessageRule {
	return ScanRule(c, func(_ context.Context, _ *policy.Transaction, _ *policy.Message, virus string) policy.Verdict {
		switch {
		case virus == "":
			return policy.Next()
		case quarantine == "":
			return policy.Deny(554, "5.7.1", "Message contains a virus")
		}
		return policy.QuarantineBecause(quarantine, "virus: "+virus)
	})
}

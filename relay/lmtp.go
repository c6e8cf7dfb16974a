package relay

import (
	"context"
	"log/slog"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// LMTP delivers to a local delivery agent (Dovecot, Cyrus) over LMTP (RFC
// 2033), which answers once per recipient after the message.
type LMTP struct {
	// Network is "unix" or "tcp"; Addr the socket path or "host:port".
	// A non-empty Route.Target overrides both: a target starting with "/"
	// is a unix socket, anything else a TCP address.
	Network, Addr string
	// Hostname is our name in LHLO; default os.Hostname().
	Hostname string
	// Dial opens the connection; default net.Dialer.
	Dial     DialFunc
	Timeouts Timeouts
	// Logger receives the transport's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Deliver sends d over one LMTP session and returns one reply per
// recipient, in order: the server's reply for that recipient after the
// message, or its refusal at RCPT.
func (l *LMTP) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	if r, bad := checkDelivery(d); bad {
		return r
	}
	network, addr := l.Network, l.Addr
	if t := d.Route.Target; t != "" {
		addr = t
		network = "tcp"
		if strings.HasPrefix(t, "/") {
			network = "unix"
		}
	}
	if network == "" {
		network = "unix"
		if !strings.HasPrefix(addr, "/") {
			network = "tcp"
		}
	}
	log := orDefault(l.Logger).With(slog.String("transport", "lmtp"), slog.String("addr", addr))
	if d.Tx != nil {
		log = log.With(slog.String("id", d.Tx.ID))
	}
	s := &session{hostname: l.Hostname, lmtp: true, tlsMode: TLSNone, timeouts: l.Timeouts, log: log}
	// TLSNone: no STARTTLS, so no plaintext retry either.
	o := s.deliver(ctx, l.Dial, network, addr, addr, d, d.Rcpts, log)
	if o.replies != nil {
		return o.replies
	}
	return sameReply(len(d.Rcpts), o.fail)
}

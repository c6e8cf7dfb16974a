package relay

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"

	"github.com/mtakit/mtakit/policy"
)

// Smarthost delivers every recipient through one fixed server (an ISP's
// relay, a mail service), optionally authenticating with AUTH PLAIN.
type Smarthost struct {
	// Addr is the server's "host:port". A non-empty Route.Target of the
	// delivery overrides it.
	Addr string
	// Hostname is our name in EHLO; default os.Hostname().
	Hostname string
	// TLS is TLSOpportunistic (the default), TLSRequired, TLSImplicit
	// (port 465) or TLSNone.
	TLS TLSMode
	// TLSConfig is used for TLS (cloned, ServerName set to Addr's host when
	// empty). With nil, TLSRequired and TLSImplicit verify the certificate
	// against the system roots, TLSOpportunistic does not verify.
	TLSConfig *tls.Config
	// Username and Password, when Username is set, are sent with AUTH
	// PLAIN, only over TLS unless AllowInsecureAuth. A refused login
	// defers the mail (4.7.8).
	Username, Password string
	AllowInsecureAuth  bool
	// Dial opens the connection; default net.Dialer.
	Dial     DialFunc
	Timeouts Timeouts
	// Logger receives the transport's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Deliver sends d through the smarthost in one session and returns one
// reply per recipient, in order.
func (h *Smarthost) Deliver(ctx context.Context, d *policy.Delivery) []policy.Reply {
	if r, bad := checkDelivery(d); bad {
		return r
	}
	addr := h.Addr
	if d.Route.Target != "" {
		addr = d.Route.Target
	}
	log := orDefault(h.Logger).With(slog.String("transport", "smarthost"), slog.String("addr", addr))
	if d.Tx != nil {
		log = log.With(slog.String("id", d.Tx.ID))
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		log.Error("bad smarthost address", slog.String("error", err.Error()))
		return sameReply(len(d.Rcpts), policy.Reply{Code: 451, Enhanced: "4.3.5", Text: "Bad smarthost address"})
	}
	s := &session{
		hostname: h.Hostname, tlsMode: h.TLS, tlsConfig: h.TLSConfig,
		user: h.Username, pass: h.Password, insecure: h.AllowInsecureAuth,
		timeouts: h.Timeouts, log: log,
	}
	o := s.deliver(ctx, h.Dial, "tcp", addr, host, d, d.Rcpts, log)
	if o.replies != nil {
		return o.replies
	}
	return sameReply(len(d.Rcpts), o.fail)
}

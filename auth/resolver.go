package auth

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/mtakit/mtakit/internal/lazyctx"
	"github.com/mtakit/mtakit/policy"
)

// Resolver wraps a policy.Resolver for libraries that classify DNS errors
// by their type: every error it returns is a plain *net.DNSError (never
// wrapped) with
//
//   - IsNotFound set for NXDOMAIN and "no such record" (and nothing else),
//   - IsTimeout and IsTemporary set for timeouts, including the per-lookup
//     timeout, context.DeadlineExceeded and os.ErrDeadlineExceeded,
//   - IsTemporary set for every other error: a cancelled context, SERVFAIL,
//     REFUSED and any other rcode (RFC 7208 section 4.4: any error but
//     NXDOMAIN is a temperror), and any error that is not a *net.DNSError
//     at all (a failure of our resolver, not of the domain's DNS).
//
// The original error stays reachable through errors.Is and errors.As
// (DNSError.UnwrapErr). The blitiri SPF library needs exactly this: it tells
// a temperror from a permerror by asserting err.(*net.DNSError), and
// go-msgauth reads net.Error's Temporary method.
//
// When the wrapped resolver is a *net.Resolver, names are queried fully
// qualified (a trailing dot is added), so the stub resolver's search list
// never turns "example.com" into "example.com.corp.example".
//
// A Resolver is safe for concurrent use if the wrapped one is.
type Resolver struct {
	r       policy.Resolver
	timeout time.Duration
	fqdn    bool
}

var _ policy.Resolver = (*Resolver)(nil)

// NewResolver wraps r (nil means net.DefaultResolver). timeout bounds each
// lookup; 0 leaves only the caller's context to bound it. Wrapping a
// *Resolver again returns a copy of it with the new timeout.
func NewResolver(r policy.Resolver, timeout time.Duration) *Resolver {
	if r == nil {
		r = net.DefaultResolver
	}
	if rr, ok := r.(*Resolver); ok {
		c := *rr
		c.timeout = timeout
		return &c
	}
	_, isNet := r.(*net.Resolver)
	return &Resolver{r: r, timeout: timeout, fqdn: isNet}
}

func (r *Resolver) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	if r.timeout > 0 {
		return lazyctx.WithTimeout(ctx, r.timeout) // no timer for a cache hit
	}
	return ctx, func() {}
}

func (r *Resolver) name(n string) string {
	if r.fqdn && n != "" && !strings.HasSuffix(n, ".") {
		if _, err := netip.ParseAddr(n); err != nil {
			return n + "."
		}
	}
	return n
}

// LookupTXT implements policy.Resolver.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	lctx, cancel := r.ctx(ctx)
	defer cancel()
	v, err := r.r.LookupTXT(lctx, r.name(name))
	return v, normalizeDNSError(lctx, err, name)
}

// LookupMX implements policy.Resolver.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	lctx, cancel := r.ctx(ctx)
	defer cancel()
	v, err := r.r.LookupMX(lctx, r.name(name))
	return v, normalizeDNSError(lctx, err, name)
}

// LookupIPAddr implements policy.Resolver.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	lctx, cancel := r.ctx(ctx)
	defer cancel()
	v, err := r.r.LookupIPAddr(lctx, r.name(host))
	return v, normalizeDNSError(lctx, err, host)
}

// LookupAddr implements policy.Resolver.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	lctx, cancel := r.ctx(ctx)
	defer cancel()
	v, err := r.r.LookupAddr(lctx, addr)
	return v, normalizeDNSError(lctx, err, addr)
}

// normalizeDNSError returns err as a plain *net.DNSError classified as the
// Resolver documents; nil stays nil.
func normalizeDNSError(ctx context.Context, err error, name string) error {
	if err == nil {
		return nil
	}
	out := &net.DNSError{Err: err.Error(), Name: name, UnwrapErr: err}
	var de *net.DNSError
	if errors.As(err, &de) {
		out.Err, out.Server = de.Err, de.Server
		if de.Name != "" {
			out.Name = de.Name
		}
		out.IsNotFound, out.IsTimeout, out.IsTemporary = de.IsNotFound, de.IsTimeout, de.IsTemporary
	}
	var ne net.Error
	switch {
	case de != nil && de.IsNotFound && !de.IsTimeout:
		// An answer: the name does not exist.
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout(),
		errors.Is(ctx.Err(), context.DeadlineExceeded):
		out.IsTimeout, out.IsTemporary, out.IsNotFound = true, true, false
	case errors.Is(err, context.Canceled), ctx.Err() != nil:
		out.IsTemporary, out.IsNotFound = true, false
	default:
		// SERVFAIL, REFUSED, a malformed answer, or not a DNS error at
		// all (the resolver itself failed): RFC 7208 section 4.4 makes any
		// error but NXDOMAIN a temperror.
		out.IsTemporary = true
	}
	if out.IsNotFound {
		out.IsTemporary, out.IsTimeout = false, false
	}
	return out
}

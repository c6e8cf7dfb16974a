package auth

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/mtakit/mtakit/internal/dnserr"
	"github.com/mtakit/mtakit/internal/lazyctx"
	"github.com/mtakit/mtakit/policy"
)

// Resolver wraps a policy.Resolver for libraries that classify DNS errors
// by their type: every error it returns is a plain *net.DNSError (never
// wrapped), classified as every rule of this package and of package relay
// classifies DNS errors, with
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
	return v, dnserr.Classify(lctx, name, err)
}

// LookupMX implements policy.Resolver.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	lctx, cancel := r.ctx(ctx)
	defer cancel()
	v, err := r.r.LookupMX(lctx, r.name(name))
	return v, dnserr.Classify(lctx, name, err)
}

// LookupIPAddr implements policy.Resolver.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	lctx, cancel := r.ctx(ctx)
	defer cancel()
	v, err := r.r.LookupIPAddr(lctx, r.name(host))
	return v, dnserr.Classify(lctx, host, err)
}

// LookupAddr implements policy.Resolver.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	lctx, cancel := r.ctx(ctx)
	defer cancel()
	v, err := r.r.LookupAddr(lctx, addr)
	return v, dnserr.Classify(lctx, addr, err)
}

package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
)

// errResolver answers every lookup with err (and no records).
type errResolver struct {
	err   error
	block bool // wait for ctx instead
	names []string
}

func (r *errResolver) do(ctx context.Context, name string) error {
	r.names = append(r.names, name)
	if r.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return r.err
}
func (r *errResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return nil, r.do(ctx, name)
}
func (r *errResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return nil, r.do(ctx, name)
}
func (r *errResolver) LookupIPAddr(ctx context.Context, name string) ([]net.IPAddr, error) {
	return nil, r.do(ctx, name)
}
func (r *errResolver) LookupAddr(ctx context.Context, name string) ([]string, error) {
	return nil, r.do(ctx, name)
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestResolverNormalizesErrors(t *testing.T) {
	nx := &net.DNSError{Err: "no such host", Name: "x.test", IsNotFound: true}
	sentinel := errors.New("database down")
	tests := []struct {
		name                        string
		err                         error
		notFound, timeout, temp     bool
		is                          error // errors.Is must still hold
		spfResultThroughOurResolver spf.Result
	}{
		{"nxdomain", nx, true, false, false, nil, spf.None},
		{"wrapped nxdomain", fmt.Errorf("lookup: %w", nx), true, false, false, nil, spf.None},
		{"servfail", &net.DNSError{Err: "server misbehaving", IsTemporary: true}, false, false, true, nil, spf.TempError},
		{"wrapped servfail", fmt.Errorf("x: %w", &net.DNSError{Err: "server misbehaving", IsTemporary: true}), false, false, true, nil, spf.TempError},
		{"refused", &net.DNSError{Err: "refused"}, false, false, true, nil, spf.TempError},
		{"deadline", context.DeadlineExceeded, false, true, true, context.DeadlineExceeded, spf.TempError},
		{"wrapped deadline", fmt.Errorf("lookup: %w", context.DeadlineExceeded), false, true, true, context.DeadlineExceeded, spf.TempError},
		{"os deadline", os.ErrDeadlineExceeded, false, true, true, os.ErrDeadlineExceeded, spf.TempError},
		{"net timeout", timeoutErr{}, false, true, true, nil, spf.TempError},
		{"canceled", context.Canceled, false, false, true, context.Canceled, spf.TempError},
		{"foreign error", sentinel, false, false, true, sentinel, spf.TempError},
		{"dnserror timeout", &net.DNSError{Err: "i/o timeout", IsTimeout: true}, false, true, true, nil, spf.TempError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewResolver(&errResolver{err: tt.err}, 0)
			for _, lookup := range []func() error{
				func() error { _, err := r.LookupTXT(context.Background(), "x.test"); return err },
				func() error { _, err := r.LookupMX(context.Background(), "x.test"); return err },
				func() error { _, err := r.LookupIPAddr(context.Background(), "x.test"); return err },
				func() error { _, err := r.LookupAddr(context.Background(), "192.0.2.1"); return err },
			} {
				err := lookup()
				de, ok := err.(*net.DNSError) // exactly the library's assertion
				require.True(t, ok, "got %T", err)
				assert.Equal(t, tt.notFound, de.IsNotFound, "IsNotFound")
				assert.Equal(t, tt.timeout, de.IsTimeout, "IsTimeout")
				assert.Equal(t, tt.temp, de.Temporary(), "Temporary")
				assert.NotEmpty(t, de.Name)
				if tt.is != nil {
					assert.ErrorIs(t, err, tt.is)
				}
			}
			// The SPF library classifies the result right through our
			// resolver.
			res, _ := spf.CheckHostWithSender(net.ParseIP("192.0.2.1"), "helo.test", "a@x.test",
				spf.WithResolver(r), spf.WithContext(context.Background()))
			assert.Equal(t, tt.spfResultThroughOurResolver, res)
		})
	}
}

// The trap itself: without the adapter, a timeout turns into permerror.
func TestSPFLibraryTrapWithoutAdapter(t *testing.T) {
	raw := &errResolver{err: fmt.Errorf("lookup: %w", context.DeadlineExceeded)}
	res, _ := spf.CheckHostWithSender(net.ParseIP("192.0.2.1"), "helo.test", "a@x.test", spf.WithResolver(raw))
	require.Equal(t, spf.PermError, res, "the library's behaviour changed; revisit Resolver")
	res, _ = spf.CheckHostWithSender(net.ParseIP("192.0.2.1"), "helo.test", "a@x.test", spf.WithResolver(NewResolver(raw, 0)))
	assert.Equal(t, spf.TempError, res)
}

func TestResolverTimeout(t *testing.T) {
	r := NewResolver(&errResolver{block: true}, 20*time.Millisecond)
	start := time.Now()
	_, err := r.LookupTXT(context.Background(), "slow.test")
	var de *net.DNSError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.IsTimeout)
	assert.True(t, de.Temporary())
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 5*time.Second, "per-lookup timeout not applied")

	// A caller's cancel is temporary, not a timeout.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = NewResolver(&errResolver{block: true}, 0).LookupMX(ctx, "slow.test")
	require.ErrorAs(t, err, &de)
	assert.False(t, de.IsTimeout)
	assert.True(t, de.Temporary())
	assert.False(t, de.IsNotFound)
}

func TestResolverSuccessPassesThrough(t *testing.T) {
	srv := dnstest.New(t,
		`ok.test. TXT "hello" "world"`,
		`ok.test. MX 10 mx.ok.test.`,
		`mx.ok.test. A 127.0.0.2`,
		`mx.ok.test. AAAA ::1`,
	)
	srv.AddPTR("127.0.0.2", "mx.ok.test")
	r := NewResolver(srv.Resolver(), time.Second)
	ctx := context.Background()
	txt, err := r.LookupTXT(ctx, "ok.test")
	require.NoError(t, err)
	assert.Equal(t, []string{"helloworld"}, txt)
	mx, err := r.LookupMX(ctx, "OK.test")
	require.NoError(t, err)
	require.Len(t, mx, 1)
	assert.Equal(t, "mx.ok.test.", mx[0].Host)
	ips, err := r.LookupIPAddr(ctx, "mx.ok.test")
	require.NoError(t, err)
	assert.Len(t, ips, 2)
	names, err := r.LookupAddr(ctx, "127.0.0.2")
	require.NoError(t, err)
	assert.Equal(t, []string{"mx.ok.test."}, names)
	// Names were asked fully qualified: no search-list variants.
	for _, q := range srv.QueryLog() {
		assert.False(t, strings.Count(q.Name, ".") > 3 && !strings.HasSuffix(q.Name, ".arpa."), "unexpected query %s", q.Name)
	}
}

func TestResolverRealDNSErrors(t *testing.T) {
	srv := dnstest.New(t, `exists.test. A 127.0.0.1`)
	srv.Fail("servfail.test", dns.RcodeServerFailure)
	srv.Fail("refused.test", dns.RcodeRefused)
	srv.Timeout("timeout.test")
	r := NewResolver(srv.Resolver(), 200*time.Millisecond)
	tests := []struct {
		name                    string
		notFound, timeout, temp bool
	}{
		{"nxdomain.test", true, false, false},
		{"exists.test", true, false, false}, // NODATA for TXT
		{"servfail.test", false, false, true},
		{"refused.test", false, false, true},
		{"timeout.test", false, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.LookupTXT(context.Background(), tt.name)
			de, ok := err.(*net.DNSError)
			require.True(t, ok, "got %T %v", err, err)
			assert.Equal(t, tt.notFound, de.IsNotFound, "IsNotFound")
			assert.Equal(t, tt.timeout, de.IsTimeout, "IsTimeout")
			assert.Equal(t, tt.temp, de.Temporary(), "Temporary")
		})
	}
}

func TestNewResolverRewrap(t *testing.T) {
	inner := NewResolver(&errResolver{}, time.Second)
	outer := NewResolver(inner, 2*time.Second)
	assert.Equal(t, 2*time.Second, outer.timeout)
	assert.Same(t, inner.r, outer.r)
	assert.True(t, NewResolver(nil, 0).fqdn)
}

package dnserr_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnserr"
	"github.com/mtakit/mtakit/internal/dnstest"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	nx := &net.DNSError{Err: "no such host", Name: "x.test", Server: "192.0.2.53:53", IsNotFound: true}
	refused := &net.DNSError{Err: "server misbehaving", Name: "x.test"} // as Go reports REFUSED
	sentinel := errors.New("database down")
	expired, cancelExpired := context.WithDeadline(context.Background(), time.Unix(1, 0))
	defer cancelExpired()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name                    string
		ctx                     context.Context
		err                     error
		notFound, timeout, temp bool
		is                      error // errors.Is must still hold
	}{
		{"nxdomain", nil, nx, true, false, false, nil},
		{"wrapped nxdomain", nil, fmt.Errorf("lookup: %w", nx), true, false, false, nil},
		{"nxdomain after the deadline is still an answer", expired, nx, true, false, false, nil},
		{"refused", nil, refused, false, false, true, nil},
		{"servfail", nil, &net.DNSError{Err: "server misbehaving", IsTemporary: true}, false, false, true, nil},
		{"wrapped servfail", nil, fmt.Errorf("x: %w", &net.DNSError{Err: "server misbehaving", IsTemporary: true}), false, false, true, nil},
		{"deadline", nil, context.DeadlineExceeded, false, true, true, context.DeadlineExceeded},
		{"wrapped deadline", nil, fmt.Errorf("lookup: %w", context.DeadlineExceeded), false, true, true, context.DeadlineExceeded},
		{"os deadline", nil, os.ErrDeadlineExceeded, false, true, true, os.ErrDeadlineExceeded},
		{"net timeout", nil, timeoutErr{}, false, true, true, nil},
		{"dnserror timeout", nil, &net.DNSError{Err: "i/o timeout", IsTimeout: true}, false, true, true, nil},
		{"foreign error under an expired context", expired, sentinel, false, true, true, sentinel},
		{"canceled", nil, context.Canceled, false, false, true, context.Canceled},
		{"foreign error under a cancelled context", cancelled, sentinel, false, false, true, sentinel},
		{"foreign error", nil, sentinel, false, false, true, sentinel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			err := dnserr.Classify(ctx, "x.test", tt.err)
			de, ok := err.(*net.DNSError)
			require.True(t, ok, "a plain *net.DNSError, got %T", err)
			assert.Equal(t, tt.notFound, de.IsNotFound, "IsNotFound")
			assert.Equal(t, tt.timeout, de.IsTimeout, "IsTimeout")
			assert.Equal(t, tt.temp, de.Temporary(), "Temporary")
			assert.Equal(t, "x.test", de.Name)
			assert.Equal(t, tt.notFound, dnserr.IsNotFound(tt.err), "IsNotFound()")
			if tt.is != nil {
				assert.ErrorIs(t, err, tt.is)
			}
		})
	}
	assert.NoError(t, dnserr.Classify(context.Background(), "x", nil))
	assert.False(t, dnserr.IsNotFound(nil))
	de := dnserr.Classify(context.Background(), "x", nx).(*net.DNSError)
	assert.Equal(t, "no such host", de.Err)
	assert.Equal(t, "192.0.2.53:53", de.Server)
}

// TestClassifyRealAnswers asks Go's own resolver, against a DNS server on
// loopback, for each kind of answer.
func TestClassifyRealAnswers(t *testing.T) {
	srv := dnstest.New(t, `exists.test. A 127.0.0.1`)
	srv.Fail("servfail.test", dns.RcodeServerFailure)
	srv.Fail("refused.test", dns.RcodeRefused)
	srv.Timeout("timeout.test")
	r := srv.Resolver()
	tests := []struct {
		name                    string
		notFound, timeout, temp bool
	}{
		{"nxdomain.test.", true, false, false},
		{"exists.test.", true, false, false}, // NODATA for TXT
		{"servfail.test.", false, false, true},
		{"refused.test.", false, false, true},
		{"timeout.test.", false, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, raw := r.LookupTXT(ctx, tt.name)
			require.Error(t, raw)
			de := dnserr.Classify(ctx, tt.name, raw).(*net.DNSError)
			assert.Equal(t, tt.notFound, de.IsNotFound, "IsNotFound (%v)", raw)
			assert.Equal(t, tt.timeout, de.IsTimeout, "IsTimeout (%v)", raw)
			assert.Equal(t, tt.temp, de.Temporary(), "Temporary (%v)", raw)
		})
	}
}

package dnscache

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestServersFromResolvConf: with no servers, New takes the nameservers of
// resolv.conf (nothing is queried here); when it cannot be read, every
// lookup fails as temporary, without touching the network.
func TestServersFromResolvConf(t *testing.T) {
	saved := resolvConf
	t.Cleanup(func() { resolvConf = saved })

	resolvConf = filepath.Join(t.TempDir(), "resolv.conf")
	require.NoError(t, os.WriteFile(resolvConf, []byte("search corp.example\nnameserver 127.0.0.53\nnameserver ::1\n"), 0o600))
	r := New(Config{})
	assert.Equal(t, []string{"127.0.0.53:53", "[::1]:53"}, r.servers)

	assert.Equal(t, []string{"127.0.0.1:53", "[::1]:5353"}, New(Config{Servers: []string{"127.0.0.1", "[::1]:5353"}}).servers, "a missing port is 53")

	resolvConf = filepath.Join(t.TempDir(), "missing")
	r = New(Config{})
	_, err := r.LookupTXT(context.Background(), "example.com.")
	var de *net.DNSError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.IsTemporary && !de.IsNotFound, "%+v", de)
}

// TestConfigDefaults: each zero field of Config means its documented
// default, a negative TTL cap turns that caching off, and the warning for
// a missing server list goes to the configured Logger.
func TestConfigDefaults(t *testing.T) {
	servers := []string{"127.0.0.1:53"}
	tests := []struct {
		name                 string
		cfg                  Config
		timeout, maxTTL, neg time.Duration
		entries              int
	}{
		{"zero", Config{Servers: servers}, 5 * time.Second, time.Hour, 5 * time.Minute, 10000},
		{"set", Config{Servers: servers, Timeout: time.Second, MaxTTL: time.Minute, MaxNegativeTTL: time.Second, MaxEntries: 7},
			time.Second, time.Minute, time.Second, 7},
		{"caching off", Config{Servers: servers, MaxTTL: -1, MaxNegativeTTL: -1, MaxEntries: -1}, 5 * time.Second, 0, 0, 10000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := New(tc.cfg)
			assert.Equal(t, tc.timeout, r.timeout)
			assert.Equal(t, tc.timeout, r.udp.Timeout)
			assert.Equal(t, tc.maxTTL, r.maxTTL)
			assert.Equal(t, tc.neg, r.maxNegTTL)
			assert.Equal(t, tc.entries, r.maxEntries)
		})
	}

	assert.Same(t, slog.Default(), New(Config{Servers: servers}).log, "nil Logger means slog.Default()")

	saved := resolvConf
	t.Cleanup(func() { resolvConf = saved })
	resolvConf = filepath.Join(t.TempDir(), "missing")
	var buf bytes.Buffer
	New(Config{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	assert.Contains(t, buf.String(), "level=WARN msg=\"dnscache: no DNS servers\"")
}

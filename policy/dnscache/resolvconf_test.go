package dnscache

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

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
	r := New(nil)
	assert.Equal(t, []string{"127.0.0.53:53", "[::1]:53"}, r.servers)

	assert.Equal(t, []string{"127.0.0.1:53", "[::1]:5353"}, New([]string{"127.0.0.1", "[::1]:5353"}).servers, "a missing port is 53")

	resolvConf = filepath.Join(t.TempDir(), "missing")
	r = New(nil)
	_, err := r.LookupTXT(context.Background(), "example.com.")
	var de *net.DNSError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.IsTemporary && !de.IsNotFound, "%+v", de)
}

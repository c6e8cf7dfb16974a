package relay

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestQueryName(t *testing.T) {
	tests := []struct{ ip, want string }{
		{"192.0.2.1", "1.2.0.192.bl.test."},
		{"::ffff:192.0.2.1", "1.2.0.192.bl.test."},
		{"2001:db8::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test."},
		{"2001:db8:abcd:12::ff", "f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.1.0.0.d.c.b.a.8.b.d.0.1.0.0.2.bl.test."},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, queryName(netip.MustParseAddr(tt.ip), "bl.test."), tt.ip)
	}
}

package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// start runs the command in-process and returns the address it printed
// and a func that stops it and returns run's error.
func start(t *testing.T, args ...string) (string, func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := run(ctx, args, pw, io.Discard)
		pw.CloseWithError(io.EOF)
		errc <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		cancel()
		return "", func() error { return <-errc }
	}
	go io.Copy(io.Discard, pr)
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "dns listening on ")
	require.True(t, ok, "first line: %q", line)
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() { cancel(); runErr = <-errc })
		return runErr
	}
	t.Cleanup(func() { stop() })
	return addr, stop
}

// resolver queries only addr, over network ("udp" or "tcp").
func resolver(addr, network string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

// freePort returns a loopback address whose port was free for both TCP
// and UDP a moment ago: the server binds both. Another process may take it
// before the server does; TestServes then tries another.
func freePort(t *testing.T) string {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
}

func TestServes(t *testing.T) {
	zone := filepath.Join(t.TempDir(), "zone")
	require.NoError(t, os.WriteFile(zone, []byte(`; a comment
$TTL 60
example.org. IN MX 10 mail.example.org.
mail.example.org. A 127.0.0.9
`), 0o600))
	records := []string{"-zone", zone, `example.net. TXT "v=spf1 ip4:127.0.0.0/8 -all"`}
	for _, tc := range []struct {
		name  string
		fixed bool
	}{
		{"default port", false},
		{"fixed port", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var addr string
			var stop func() error
			if !tc.fixed {
				addr, stop = start(t, records...)
			}
			for try := 0; tc.fixed && try < 3 && addr == ""; try++ {
				want := freePort(t)
				if addr, stop = start(t, append([]string{"-listen", want}, records...)...); addr != "" {
					assert.Equal(t, want, addr)
				}
			}
			require.NotEmpty(t, addr, "server did not start")
			for _, network := range []string{"udp", "tcp"} {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				r := resolver(addr, network)
				txt, err := r.LookupTXT(ctx, "example.net.")
				require.NoError(t, err, network)
				assert.Equal(t, []string{"v=spf1 ip4:127.0.0.0/8 -all"}, txt, network)
				mx, err := r.LookupMX(ctx, "example.org.")
				require.NoError(t, err, network)
				require.Len(t, mx, 1)
				assert.Equal(t, "mail.example.org.", mx[0].Host)
				_, err = r.LookupTXT(ctx, "nowhere.example.com.")
				var dnsErr *net.DNSError
				require.ErrorAs(t, err, &dnsErr, network)
				assert.True(t, dnsErr.IsNotFound, network)
			}
			assert.NoError(t, stop())
		})
	}
}

func TestRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no records", nil, "no records"},
		{"not loopback", []string{"-listen", "192.0.2.1:53", `a. TXT "x"`}, "only loopback"},
		{"not an address", []string{"-listen", "localhost:53", `a. TXT "x"`}, "want a loopback ip:port"},
		{"bad record", []string{`a. MX ten b.`}, "bad record"},
		{"missing zone file", []string{"-zone", "/nonexistent/zone"}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := run(ctx, tc.args, io.Discard, io.Discard)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

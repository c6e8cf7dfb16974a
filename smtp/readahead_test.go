package smtp

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReadAhead: whatever sizes the reader asks for, conn.Read hands over
// the bytes the peer sent, in order, then the peer's EOF, and it keeps no
// buffer once everything read from the socket was taken.
func TestReadAhead(t *testing.T) {
	data := make([]byte, 300<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.UintN(256))
	}
	for _, tc := range []struct {
		name  string
		write int // size of the peer's writes
		read  int // size of our reads; 0: through a 4 KiB bufio.Reader, byte by byte
	}{
		{"bufio bytes, large writes", 100 << 10, 0},
		{"bufio bytes, small writes", 1000, 0},
		{"small reads", 64 << 10, 7},
		{"reads as large as the buffer", 64 << 10, readAheadSize},
		{"reads of half the buffer bypass it", 50 << 10, readAheadSize / 2},
		{"mixed", 33 << 10, 5000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ours, peer := net.Pipe()
			defer ours.Close()
			go func() {
				for p := data; len(p) > 0; {
					n := min(len(p), tc.write)
					if _, err := peer.Write(p[:n]); err != nil {
						return
					}
					p = p[n:]
				}
				peer.Close()
			}()
			ours.SetDeadline(time.Now().Add(10 * time.Second))
			// As a BDAT chunk: bytes handed over as they come.
			c := &conn{Conn: ours, chunk: int64(len(data))}
			var got bytes.Buffer
			if tc.read == 0 {
				br := bufio.NewReaderSize(c, 4096)
				for {
					b, err := br.ReadByte()
					if err != nil {
						require.ErrorIs(t, err, io.EOF)
						break
					}
					got.WriteByte(b)
				}
			} else {
				buf := make([]byte, tc.read)
				for {
					n, err := c.Read(buf)
					got.Write(buf[:n])
					if err != nil {
						require.ErrorIs(t, err, io.EOF)
						break
					}
				}
			}
			assert.True(t, bytes.Equal(data, got.Bytes()), "same bytes in the same order")
			assert.Nil(t, c.ahead, "no buffer held once drained")
		})
	}
}

// TestSTARTTLSInjectionLarge sends more than go-smtp's 4 KiB read buffer
// of commands in the packet of STARTTLS: what follows the buffer reaches
// the TLS handshake as plaintext, which must fail it (or, if the client's
// handshake somehow goes through, no injected command may run).
func TestSTARTTLSInjectionLarge(t *testing.T) {
	h := authServer(t, nil)
	c := dialRaw(t, h.addrs["mta"])
	c.reply()
	c.expect("EHLO client.test", 250)
	c.send("STARTTLS\r\n" + strings.Repeat("NOOP\r\n", 2000) + "MAIL FROM:<evil@attacker.test>\r\n")
	code, text := c.reply()
	require.Equal(t, 220, code, text)
	tc := tls.Client(c.Conn, clientTLS())
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		var ne net.Error
		assert.False(t, errors.As(err, &ne) && ne.Timeout(), "the handshake fails, not hangs: %v", err)
		return
	}
	tr := &rawConn{t: t, Conn: tc, r: bufio.NewReader(tc)}
	code, _ = tr.cmd("RCPT TO:<a@mx.test>")
	assert.Equal(t, 502, code, "no MAIL is pending")
}

// TestReadAheadIdle: after a short command the next read, which waits for
// the client, goes into the reader's own buffer (no pooled buffer held by
// an idle connection); a full read, a body arriving, turns reading ahead on.
func TestReadAheadIdle(t *testing.T) {
	ours, peer := net.Pipe()
	defer ours.Close()
	defer peer.Close()
	ours.SetDeadline(time.Now().Add(10 * time.Second))
	c := &conn{Conn: ours}
	go peer.Write([]byte("NOOP\r\n"))
	p := make([]byte, 4096)
	n, err := c.Read(p)
	require.NoError(t, err)
	assert.Equal(t, "NOOP\r\n", string(p[:n]))
	assert.False(t, c.streaming, "a short read: the next one may wait, without a pooled buffer")

	c.chunk = 3 * 4096 // a BDAT chunk
	go peer.Write(bytes.Repeat([]byte("x"), 3*4096))
	_, err = io.ReadFull(c, p)
	require.NoError(t, err)
	assert.True(t, c.streaming, "a full read: more is coming, read ahead")
}

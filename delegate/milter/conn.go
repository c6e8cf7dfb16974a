package milter

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
)

// maxPacket bounds a packet the milter sends us. go-milter accepts up to
// 512 MiB and allocates the length a packet announces before reading
// it: a milter answering garbage (an HTTP server, a wrong port) would
// make us allocate hundreds of megabytes. A body replacement comes in
// packets of at most a few megabytes in practice (1 MiB is the largest
// size the protocol negotiates).
const maxPacket = 64 << 20

// guardConn is the connection to a milter as go-milter sees it. It
//
//   - checks the length of every packet the milter sends before go-milter
//     reads it (see maxPacket; a zero length, which makes go-milter
//     panic, is refused too);
//   - carries the deadline of the command being run: go-milter is told
//     to set none (timeouts 0) and the session sets one per command,
//     shortened, or expired at once, by the rule's context (see
//     session.op).
type guardConn struct {
	net.Conn

	// The frame being read.
	hdr  [4]byte
	pend []byte // header bytes checked, not yet handed over
	rem  int    // payload bytes of the frame not yet read
}

func (c *guardConn) Read(p []byte) (int, error) {
	if len(c.pend) > 0 {
		n := copy(p, c.pend)
		c.pend = c.pend[n:]
		return n, nil
	}
	if c.rem > 0 {
		if len(p) > c.rem {
			p = p[:c.rem]
		}
		n, err := c.Conn.Read(p)
		c.rem -= n
		return n, err
	}
	if _, err := io.ReadFull(c.Conn, c.hdr[:]); err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint32(c.hdr[:])
	if n == 0 || n > maxPacket {
		return 0, fmt.Errorf("milter: the milter sent a packet of %d bytes (not a milter, or a broken one)", n)
	}
	c.rem = int(n)
	k := copy(p, c.hdr[:])
	c.pend = c.hdr[k:]
	return k, nil
}

// dialed is a go-milter Dialer handing over a connection already made
// (with the rule's context, which go-milter's Dialer has no room for).
type dialed struct{ c net.Conn }

func (d dialed) Dial(string, string) (net.Conn, error) { return d.c, nil }

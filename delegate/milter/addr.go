package milter

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Addr is where a milter listens: a TCP address or a Unix socket.
type Addr struct {
	Network string // "tcp" or "unix"
	Address string // "127.0.0.1:11332" ("[::1]:11332") or "/run/milter.sock"
}

// String returns a in Postfix's syntax ("inet:127.0.0.1:11332",
// "unix:/run/milter.sock"), which ParseAddr reads back.
func (a Addr) String() string {
	if a.Network == "unix" {
		return "unix:" + a.Address
	}
	return "inet:" + a.Address
}

// ErrBadAddr is wrapped by the errors of ParseAddr.
var ErrBadAddr = errors.New("milter: bad milter address")

// ParseAddr reads a milter address as Postfix's smtpd_milters and
// Sendmail's InputMailFilters write it:
//
//	inet:127.0.0.1:11332   inet:[::1]:11332   inet:localhost:11332
//	inet:11332@127.0.0.1   inet6:11332@::1    (Sendmail's order)
//	unix:/run/opendkim/opendkim.sock          local:/path (a synonym)
//
// A host name is resolved when the milter is dialled, by the system's
// resolver: give an address literal to keep DNS out of the path.
func ParseAddr(s string) (Addr, error) {
	bad := func(why string) (Addr, error) {
		return Addr{}, fmt.Errorf("%w %q: %s", ErrBadAddr, s, why)
	}
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return bad(`want "inet:host:port" or "unix:/path"`)
	}
	if strings.ContainsAny(rest, "\x00\r\n\t ") {
		return bad("white space or control character")
	}
	switch strings.ToLower(kind) {
	case "unix", "local":
		if rest == "" {
			return bad("empty socket path")
		}
		return Addr{Network: "unix", Address: rest}, nil
	case "inet", "inet6", "tcp":
	default:
		return bad("unknown kind " + strconv.Quote(kind) + ` (want "inet" or "unix")`)
	}
	var host, port string
	if p, h, ok := strings.Cut(rest, "@"); ok {
		// Sendmail: port@host.
		host, port = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), p
	} else {
		var err error
		host, port, err = net.SplitHostPort(rest)
		if err != nil {
			return bad(`want "host:port"`)
		}
	}
	if host == "" {
		return bad("empty host")
	}
	if strings.ContainsAny(host, "@[]/") {
		return bad("malformed host")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
		return bad("port must be a number from 1 to 65535")
	}
	return Addr{Network: "tcp", Address: net.JoinHostPort(host, port)}, nil
}

package smtp

import "bytes"

// The SASL servers are ours rather than go-sasl's: go-sasl has no LOGIN
// server, and its PLAIN parse errors reach the client as 454 (temporary)
// with the library's text. Malformed input here gives 501 5.5.2.

type checkFunc func(identity, username, password string) error

// plainServer implements SASL PLAIN (RFC 4616): one response
// "authzid NUL authcid NUL passwd".
type plainServer struct {
	check checkFunc
	asked bool
}

func (p *plainServer) Next(resp []byte) ([]byte, bool, error) {
	if resp == nil && !p.asked {
		p.asked = true
		return []byte{}, false, nil // empty challenge: "334 "
	}
	id, user, pass, ok := parsePlain(resp)
	if !ok {
		return nil, true, errAuthSyntax
	}
	return nil, true, p.check(id, user, pass)
}

// parsePlain splits a SASL PLAIN response into authorization identity,
// user name and password. ok is false when the response is malformed (not
// three NUL-separated parts, an empty user name or password, or more than
// 255 bytes in a part, as RFC 4616 allows).
func parsePlain(resp []byte) (identity, username, password string, ok bool) {
	parts := bytes.Split(resp, []byte{0})
	if len(parts) != 3 || len(parts[1]) == 0 || len(parts[2]) == 0 {
		return "", "", "", false
	}
	for _, p := range parts {
		if len(p) > 255 {
			return "", "", "", false
		}
	}
	return string(parts[0]), string(parts[1]), string(parts[2]), true
}

// loginServer implements the obsolete but common LOGIN mechanism: the
// server asks "Username:" then "Password:", the client answers each in
// base64 (go-smtp decodes it). An initial response is the user name.
type loginServer struct {
	check    checkFunc
	step     int
	username string
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if resp == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		if len(resp) == 0 || len(resp) > 255 || bytes.IndexByte(resp, 0) >= 0 {
			return nil, true, errAuthSyntax
		}
		l.username, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		if len(resp) == 0 || len(resp) > 255 {
			return nil, true, errAuthSyntax
		}
		return nil, true, l.check("", l.username, string(resp))
	}
	return nil, true, errAuthSyntax
}

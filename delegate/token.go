package delegate

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// TokenHeader is the header field the delegation adds at the top of the
// message it sends to the filter. The filter passes it through; the receiver
// uses it to find the transaction waiting for the message and removes it.
const TokenHeader = "X-Mtakit-Delegation"

// tokenLen is the length of a token: 16 random bytes in lower-case hex.
const tokenLen = 32

// newToken returns a fresh random token.
func newToken() string {
	var b [tokenLen / 2]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// validToken reports whether s has the form of a token newToken makes.
func validToken(s string) bool {
	if len(s) != tokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Errors of the receiver's parsing of a returned message.
var (
	errNoToken  = errors.New("delegate: no delegation token in the returned message")
	errBadToken = errors.New("delegate: malformed delegation token")
)

// takeToken finds the first TokenHeader field of h, the one the delegation
// put at the top (a filter may add fields above it; a copy the sender forged
// further down is ignored), removes that field only, and returns its value.
func takeToken(h *policy.Header) (string, error) {
	found := false
	var tok string
	h.DelFunc(func(f policy.Field) bool {
		if found || !strings.EqualFold(f.Name(), TokenHeader) {
			return false
		}
		found, tok = true, f.Value()
		return true
	})
	if !found {
		return "", errNoToken
	}
	if !validToken(tok) {
		return "", errBadToken
	}
	return tok, nil
}

// readReturned reads the header block of a message coming back from the
// filter and takes the delegation token out of it. The returned function
// writes the message without the token field to w: the header as it was
// read, byte for byte, then the rest of br.
func readReturned(br *bufio.Reader) (token string, writeTo func(w io.Writer) (int64, error), err error) {
	h, n, sep, err := policy.ReadHeader(br, policy.MaxHeaderBytes)
	if err != nil {
		return "", nil, err
	}
	sepLine := "\r\n"
	if sep && n-h.Size() == 1 {
		sepLine = "\n" // keep a bare-LF separator as it came
	}
	tok, err := takeToken(h)
	if err != nil {
		return "", nil, err
	}
	return tok, func(w io.Writer) (int64, error) {
		n, err := h.WriteTo(w)
		if err != nil {
			return n, err
		}
		if sep {
			m, err := io.WriteString(w, sepLine)
			n += int64(m)
			if err != nil {
				return n, err
			}
		}
		m, err := io.Copy(w, br)
		return n + m, err
	}, nil
}

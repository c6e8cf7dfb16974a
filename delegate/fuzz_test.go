package delegate

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// FuzzParseReply: any clamd reply gives either a virus name or an error,
// never both, and a name has no control characters.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		"stream: OK", "stream: OK\x00", "stream: Eicar-Test-Signature.UNOFFICIAL FOUND\x00",
		"INSTREAM size limit exceeded. ERROR", "stream: x ERROR", "1: stream: OK", " FOUND", "", "\x00",
		"stream: \r\n FOUND",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, reply string) {
		virus, err := parseReply(reply)
		if err != nil {
			assert.Empty(t, virus)
			var ce *ClamdError
			assert.True(t, errors.Is(err, ErrSizeLimit) || errors.As(err, &ce), "%v", err)
			return
		}
		assert.False(t, strings.ContainsAny(virus, "\x00\r\n"), "%q", virus)
		if virus != "" {
			assert.Equal(t, strings.TrimSpace(virus), virus)
		}
	})
}

// FuzzReadReturned: the receiver's token extraction. When it finds a
// token, the output is the input minus exactly the first TokenHeader field;
// it never panics.
func FuzzReadReturned(f *testing.F) {
	tok := newToken()
	for _, s := range []string{
		TokenHeader + ": " + tok + "\r\nSubject: x\r\n\r\nbody\r\n",
		"Received: by filter\r\n" + TokenHeader + ": " + tok + "\r\n\r\n",
		"Subject: x\r\n\r\n" + TokenHeader + ": " + tok + "\r\n",
		TokenHeader + ":\r\n " + tok + "\r\n\r\nfolded\r\n",
		strings.ToLower(TokenHeader) + ": " + tok + "\nbare: lf\n\nbody",
		TokenHeader + ": " + tok + "\r\n" + TokenHeader + ": " + newToken() + "\r\n\r\n",
		TokenHeader + ": not-a-token\r\n\r\n",
		"no header at all",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		tok, writeTo, err := readReturned(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			assert.Empty(t, tok)
			return
		}
		require.True(t, validToken(tok), "%q", tok)
		var out bytes.Buffer
		_, err = writeTo(&out)
		require.NoError(t, err)

		// Independently: where is the first token field in the input?
		h, _, _, err := policy.ReadHeader(bufio.NewReader(bytes.NewReader(in)), policy.MaxHeaderBytes)
		require.NoError(t, err)
		off := 0
		for _, fl := range h.Fields() {
			if strings.EqualFold(fl.Name(), TokenHeader) {
				assert.Equal(t, tok, fl.Value())
				want := append(append([]byte(nil), in[:off]...), in[off+len(fl.Raw):]...)
				assert.Equal(t, string(want), out.String())
				return
			}
			off += len(fl.Raw)
		}
		t.Fatalf("token %q found but no token field in %q", tok, in)
	})
}

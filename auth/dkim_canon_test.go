package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// msgauthBodyHash returns the bh= go-msgauth computes for body.
func msgauthBodyHash(tb testing.TB, body string, c dkim.Canonicalization) string {
	tb.Helper()
	s, err := dkim.NewSigner(&dkim.SignOptions{
		Domain: "example.com", Selector: "s", Signer: testEd25519(),
		HeaderCanonicalization: c, BodyCanonicalization: c,
	})
	require.NoError(tb, err)
	_, err = io.WriteString(s, "From: a@example.com\r\n\r\n"+body)
	require.NoError(tb, err)
	require.NoError(tb, s.Close())
	tags, err := ParseDKIMTags(strings.TrimPrefix(strings.TrimSpace(s.Signature()), "DKIM-Signature:"))
	require.NoError(tb, err)
	return dkStripWS(tags["bh"])
}

// ourBodyHash hashes body with dkBodyHasher, written in chunks of size
// step (the canonicalization must not depend on where writes split).
func ourBodyHash(tb testing.TB, body string, relaxed bool, step int) string {
	tb.Helper()
	b := newDKBodyHasher(sha256.New(), relaxed, -1)
	defer b.free()
	for len(body) > 0 {
		n := min(step, len(body))
		_, err := b.Write([]byte(body[:n]))
		require.NoError(tb, err)
		body = body[n:]
	}
	sum, err := b.Sum()
	require.NoError(tb, err)
	return base64.StdEncoding.EncodeToString(sum)
}

var bodyHashSeeds = []string{
	"",
	"\r\n",
	"\r\n\r\n",
	"a",
	"a\r\n",
	"a \t \r\n\r\n \r\n",
	"  lead  and   inner\t\tspace \r\nnext line\t\r\n",
	"bare\nlf\n\nlines\n\n",
	"bare\rcr\r\r\n\r",
	"ends in cr\r",
	"ends in cr lf cr\r\n\r",
	"\r\r\r\n\n\n",
	" \r\n \r\n",
	"x" + strings.Repeat("\r\n", 700) + "y\r\n" + strings.Repeat("\r\n", 900),
	"x" + strings.Repeat(" \r\n\t", 400) + strings.Repeat("\n", 1000),
	strings.Repeat("line  with \t white space  \r\n", 300) + strings.Repeat("\r\n \t", 500) + "z",
	// The run at a time path of the relaxed canonicalization: single
	// spaces at every offset of its eight-byte words, control and
	// non-ASCII bytes (below and above the word test's range), a space or
	// tab last before a write boundary or a line break, runs longer than
	// the output buffer.
	"abcdefg hijklmn opqrstu vwxyzAB CDEFGHI JKLMNOP\r\na b c d e f g h i j k l m n o p q\r\n",
	"abcdefgh ijklmnop  qrstuvwx\tyz \r\n1234567 \r\n12345678 \n123456789\t\r\n",
	"ctl\x00\x01\x0b\x0c\x1f\x20\x21\x7f\x80\xff bytes\x00 \x00\r\n\xc3\xa9t\xc3\xa9 \xe2\x80\x83x\r\n",
	"no line end at all, words and  spaces  ",
	strings.Repeat("word ", 2000) + "\r\n" + strings.Repeat("Zm9vYmFy", 1200) + " \r\n",
	strings.Repeat(strings.Repeat("0123456789ABCDEFabcdef+/", 3)+"wxyz\r\n", 200),
	strings.Repeat("a b\tc  d \r", 300) + "\r\n\n\r\n",
}

func TestDKBodyHasherMatchesGoMsgauth(t *testing.T) {
	for _, body := range bodyHashSeeds {
		for _, c := range []dkim.Canonicalization{dkim.CanonicalizationRelaxed, dkim.CanonicalizationSimple} {
			want := msgauthBodyHash(t, body, c)
			for _, step := range []int{1, 2, 3, 7, 8, 9, 512, 4097, 1 << 20} {
				assert.Equal(t, want, ourBodyHash(t, body, c == dkim.CanonicalizationRelaxed, step), "%s body %.40q in writes of %d", c, body, step)
			}
		}
	}
}

// TestDKBodyHasherLimit: l= counts canonical bytes, the final CRLF
// included.
func TestDKBodyHasherLimit(t *testing.T) {
	for _, tc := range []struct {
		body    string
		relaxed bool
		limit   int64
		want    string
	}{
		{"abc  def \r\n\r\n", true, 4, "abc "},
		{"abc  def \r\n\r\n", true, 100, "abc def\r\n"},
		{"abc  def \r\n\r\n", false, 9, "abc  def "},
		{"abc\r\n" + strings.Repeat("\r\n", 2000), false, 100, "abc\r\n"},
		{"", false, 1, "\r"},
		{"", true, 5, ""},
	} {
		b := newDKBodyHasher(sha256.New(), tc.relaxed, tc.limit)
		_, err := io.WriteString(b, tc.body)
		require.NoError(t, err)
		sum, err := b.Sum()
		require.NoError(t, err)
		b.free()
		want := sha256.Sum256([]byte(tc.want))
		assert.Equal(t, want[:], sum, "%q relaxed=%v l=%d", tc.body, tc.relaxed, tc.limit)
	}
}

func FuzzDKBodyHasher(f *testing.F) {
	for _, s := range bodyHashSeeds {
		f.Add(s, uint8(3))
	}
	f.Fuzz(func(t *testing.T, body string, step uint8) {
		for _, c := range []dkim.Canonicalization{dkim.CanonicalizationRelaxed, dkim.CanonicalizationSimple} {
			want := msgauthBodyHash(t, body, c)
			got := ourBodyHash(t, body, c == dkim.CanonicalizationRelaxed, int(step)+1)
			if want != got {
				t.Fatalf("%s body %q in writes of %d: go-msgauth %s, ours %s", c, body, int(step)+1, want, got)
			}
		}
	})
}

// BenchmarkDKIMBodyHash hashes a 1 MiB body under relaxed
// canonicalization, ours against go-msgauth's (through its signer, with
// Ed25519 so the signature costs little), in one run.
func BenchmarkDKIMBodyHash(b *testing.B) {
	line := "0123456789 abcdef \t ghijkl  mnopqrstuvwxyz\t0123456789abcdef  \r\n"
	body := []byte(strings.Repeat(line, 1<<20/len(line)))
	write := func(b *testing.B, w io.Writer) {
		for p := body; len(p) > 0; {
			n := min(32<<10, len(p))
			if _, err := w.Write(p[:n]); err != nil {
				b.Fatal(err)
			}
			p = p[n:]
		}
	}
	b.Run("auth", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			h := newDKBodyHasher(sha256.New(), true, -1)
			write(b, h)
			if _, err := h.Sum(); err != nil {
				b.Fatal(err)
			}
			h.free()
		}
	})
	b.Run("go-msgauth", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			s, err := dkim.NewSigner(&dkim.SignOptions{Domain: "example.com", Selector: "s", Signer: testEd25519(),
				HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed})
			if err != nil {
				b.Fatal(err)
			}
			io.WriteString(s, "From: a@example.com\r\n\r\n")
			write(b, s)
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

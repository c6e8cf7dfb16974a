package policytest_test

import (
	"strings"
	"testing"

	"github.com/mtakit/mtakit/policy/policytest"
)

// FuzzNormalizeCRLF checks that the result has no bare LF, ends with CRLF,
// and is the input with CRs inserted only before bare LFs (and a final CRLF).
func FuzzNormalizeCRLF(f *testing.F) {
	for _, s := range []string{"", "a", "a\n", "a\r\n", "\n\n", "a\rb", "\r", "\r\r\n", "x\n.\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := policytest.NormalizeCRLF(in)
		if !strings.HasSuffix(out, "\r\n") {
			t.Fatalf("%q does not end with CRLF", out)
		}
		for i := 0; i < len(out); i++ {
			if out[i] == '\n' && (i == 0 || out[i-1] != '\r') {
				t.Fatalf("bare LF at %d in %q", i, out)
			}
		}
		if policytest.NormalizeCRLF(out) != out {
			t.Fatalf("not idempotent: %q", out)
		}
		// Dropping the CR before each LF gives the input with LF line ends.
		want := strings.ReplaceAll(in, "\r\n", "\n")
		got := strings.ReplaceAll(out, "\r\n", "\n")
		if got != want && got != want+"\n" {
			t.Fatalf("content changed: %q -> %q", in, out)
		}
	})
}

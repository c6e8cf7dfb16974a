package xtext

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestEncode(t *testing.T) {
	assert.Equal(t, "a+2Bb+3Dc+20d", Encode("a+b=c d"))
	assert.Equal(t, "user@example.com", Encode("user@example.com"))
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"a+2Bb+3Dc+20d", "a+b=c d", true},
		{"user@example.com", "user@example.com", true},
		{"rfc822;a+40b", "rfc822;a@b", true},
		{"trail+4", "", false},
		{"bad+ZZ", "", false},
	} {
		got, err := Decode(tc.in)
		if !tc.ok {
			assert.Error(t, err, tc.in)
			continue
		}
		assert.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
}

// FuzzDecode: Decode never panics, and whatever Encode makes decodes back.
func FuzzDecode(f *testing.F) {
	f.Add("a+2Bb+3Dc+20d")
	f.Add("+")
	f.Add("x+4")
	f.Fuzz(func(t *testing.T, s string) {
		Decode(s)
		got, err := Decode(Encode(s))
		if err != nil || got != s {
			t.Fatalf("Decode(Encode(%q)) = %q, %v", s, got, err)
		}
	})
}

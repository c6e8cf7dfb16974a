// Package xtext encodes and decodes RFC 3461 xtext, the form of the DSN
// parameters ENVID and ORCPT (and of AUTH=) in SMTP commands.
package xtext

import (
	"fmt"
	"io"
	"strings"
)

// Encode returns s as xtext: '+', '=' and the bytes outside '!'..'~' as
// "+XX" (two upper-case hex digits).
func Encode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Decode returns the text xtext s encodes.
func Decode(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '+' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", io.ErrUnexpectedEOF
		}
		var c byte
		if _, err := fmt.Sscanf(s[i+1:i+3], "%02X", &c); err != nil {
			return "", err
		}
		b.WriteByte(c)
		i += 2
	}
	return b.String(), nil
}

package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConsoleFlags(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		err  string
	}{
		{"off", nil, ""},
		{"without -users", []string{"-console", "127.0.0.1:8025", "-admins", "a@b.test"}, "-console needs -users"},
		{"without -admins", []string{"-console", "127.0.0.1:8025", "-users", "users"}, "-console needs -admins"},
		{"blank -admins", []string{"-console", "127.0.0.1:8025", "-users", "users", "-admins", " , "}, "-console needs -admins"},
		{"bad address", []string{"-console", "8025", "-users", "users", "-admins", "a@b.test"}, "-console:"},
		{"on", []string{"-console", "127.0.0.1:8025", "-users", "users", "-admins", "a@b.test, c@d.test"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.args, io.Discard)
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				return
			}
			require.NoError(t, err)
			if len(tt.args) > 0 {
				assert.Equal(t, []string{"a@b.test", "c@d.test"}, c.admins)
			}
		})
	}
}

package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/milterd"
)

// TestMilterRspamd runs doe-family with -milter pointing at a real rspamd
// in milter mode (internal/milterd; skipped without rspamd unless
// MTAKIT_INTEGRATION=1).
func TestMilterRspamd(t *testing.T) {
	rspamd := milterd.Rspamd(t, milterd.RspamdConfig{})
	e := newEnv(t, "-milter", rspamd.Spec())
	from := "someone@example.org"

	t.Run("a clean message is delivered with rspamd's fields", func(t *testing.T) {
		require.NoError(t, send(t, e.listen, "client.example.org", false, from, []string{"jane@doe-family.com"}, message(from, "jane@doe-family.com", "clean", "hello Jane")))
		files := waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 1)
		assert.Contains(t, files[0], "X-Spamd-Result: default: False")
		assert.Contains(t, files[0], "X-Rspamd-Action: no action\n")
		assert.Contains(t, files[0], "Received-SPF: pass", "our own rules still run")
	})

	t.Run("GTUBE is refused with rspamd's reply", func(t *testing.T) {
		err := send(t, e.listen, "client.example.org", false, from, []string{"dmarc@doe-family.com"}, message(from, "dmarc@doe-family.com", "spam", milterd.GTUBE))
		code, enh := smtpCode(t, err)
		assert.Equal(t, 554, code)
		assert.Equal(t, "5.7.1", enh)
		assert.Contains(t, err.Error(), "Gtube pattern")
	})

	t.Run("rspamd's soft reject is a 451", func(t *testing.T) {
		msg := strings.Replace(message(from, "par@doe-family.com", "later", "x"), "\r\n\r\n", "\r\n"+milterd.SoftRejectHeader+": soft-reject\r\n\r\n", 1)
		err := send(t, e.listen, "client.example.org", false, from, []string{"par@doe-family.com"}, msg)
		code, enh := smtpCode(t, err)
		assert.Equal(t, 451, code)
		assert.Equal(t, "4.7.1", enh)
		assert.Contains(t, err.Error(), milterd.SoftRejectMessage)
	})
}

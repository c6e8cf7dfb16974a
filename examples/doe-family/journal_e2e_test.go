package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/queue/admin"
	"github.com/mtakit/mtakit/queue/journal"
)

// waitCount waits until the queue command (with the server running, or
// offline) counts n messages in queue q.
func (e *env) waitCount(q string, n int) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var c admin.Counts
		e.queueJSON(&c, "count")
		if c.Queues[q] == n {
			return
		}
		require.True(e.t, time.Now().Before(deadline), "waiting for %d messages in %s, have %v", n, q, c.Queues)
		time.Sleep(50 * time.Millisecond)
	}
}

// TestJournalQueue: doe-family on the journal (-queue journal): mail is
// accepted into it and delivered to the Maildir, a deferred message
// survives kill -9, the queue command works on it, with the server
// running and without (offline, on the journal itself), and the restarted
// server delivers it.
func TestJournalQueue(t *testing.T) {
	e := newEnv(t, "-queue", "journal", "-retry-min", "1h")
	_, err := os.Stat(filepath.Join(e.spool, journal.LockFile))
	require.NoError(t, err, "the journal is in -spool")
	_, err = os.Stat(filepath.Join(e.spool, "working"))
	assert.ErrorIs(t, err, os.ErrNotExist, "no spool directories")

	// Accepted, then delivered to the Maildir (full policy: SPF, DMARC).
	for _, subj := range []string{"journal-1", "journal-2", "journal-3"} {
		require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"},
			message("someone@example.org", "jane@doe-family.com", subj, "hi jane")))
	}
	files := waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 3)
	assert.Contains(t, files[0], "Received-SPF: pass")
	e.waitCount("working", 0)

	// A relayed message the relayhost refuses is deferred in the journal.
	e.sink.fail.Store(1 << 20)
	require.NoError(t, send(t, e.submission, "laptop.example.net", true, "john@doe-family.com", []string{"friend@other.test"},
		message("john@doe-family.com", "friend@other.test", "journal-deferred", "deferred body")))
	e.waitCount("deferred", 1)

	// kill -9: the journal keeps it; offline, the queue command reads the
	// journal itself.
	e.stop(syscall.SIGKILL)
	r := e.queueCmd("count", "-json")
	require.NoError(t, r.err, r.stderr)
	assert.Contains(t, r.stderr, "working on the spool "+e.spool+" directly")
	var c admin.Counts
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &c))
	assert.Equal(t, 1, c.Queues["deferred"])

	// Restarted, the server has it deferred; requeued, it is delivered.
	e.sink.fail.Store(0)
	e.start()
	e.waitCount("deferred", 1)
	e.queueOK("requeue", "-all", "-queue", "deferred")
	msgs := waitSink(t, e.sink, 1)
	assert.Contains(t, string(msgs[0].Data), "Subject: journal-deferred")
	assert.Contains(t, string(msgs[0].Data), "DKIM-Signature:", "the postq header edits kept in the journal")
	e.waitCount("deferred", 0)
	e.stop(syscall.SIGTERM)
	assert.Contains(t, e.stdout.String(), "doe-family stopped")
}

package queuetest

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// LogBuffer collects what a logger writes (slog.NewJSONHandler(&buf,
// nil)), safe for the store's goroutines.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// QuarantinedAtEnqueueLogged checks what a store that takes messages
// through Enqueue (logging as JSON to logs) does with a message accepted
// straight into a quarantine, which never reaches a scheduler: it writes
// the "queue: result" line of each recipient itself, as the spool does.
func QuarantinedAtEnqueueLogged(t *testing.T, enqueue func(context.Context, *policy.Transaction, *policy.Message) error, logs *LogBuffer) {
	t.Helper()
	tx := NewTx("quar1", "a@example.org", "b@example.com", "c@example.com")
	tx.SetQuarantine("virus_q")
	m, err := policy.NewMessage(strings.NewReader(Msg), int64(len(Msg)), nil)
	require.NoError(t, err)
	require.NoError(t, enqueue(context.Background(), tx, m))
	var to []string
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
		if rec["msg"] == "queue: result" && rec["id"] == "quar1" {
			assert.Equal(t, "quarantined", rec["status"])
			assert.Equal(t, "quarantine/virus_q", rec["queue"])
			to = append(to, rec["to"].(string))
		}
	}
	assert.Equal(t, []string{"<b@example.com>", "<c@example.com>"}, to)
}

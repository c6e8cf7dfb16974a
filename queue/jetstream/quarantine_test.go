package jetstream

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// TestQuarantinedAtEnqueueLogged: a message accepted straight into a
// quarantine never reaches a scheduler; the store writes the result line
// of each recipient itself, as the spool does.
func TestQuarantinedAtEnqueueLogged(t *testing.T) {
	var (
		mu   sync.Mutex
		logs bytes.Buffer
	)
	st := open(t, embedded(t).URL(), Config{Logger: slog.New(slog.NewJSONHandler(lockedWriter{&mu, &logs}, nil))})
	tx := policy.NewTransaction(&policy.Conn{ID: "c1"}, "quar1")
	tx.From = policy.MustParseAddress("a@example.org")
	for _, r := range []string{"b@example.com", "c@example.com"} {
		tx.Rcpts = append(tx.Rcpts, policy.Recipient{Addr: policy.MustParseAddress(r)})
	}
	tx.SetQuarantine("virus_q")
	require.NoError(t, st.Enqueue(context.Background(), tx, newMessage(t)))
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	var to []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
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

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

package jetstream

import (
	"log/slog"
	"testing"

	"github.com/mtakit/mtakit/queue/queuetest"
)

// TestQuarantinedAtEnqueueLogged: a message accepted straight into a
// quarantine never reaches a scheduler; the store writes the result line
// of each recipient itself, as the spool does.
func TestQuarantinedAtEnqueueLogged(t *testing.T) {
	var logs queuetest.LogBuffer
	st := open(t, embedded(t).URL(), Config{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	queuetest.QuarantinedAtEnqueueLogged(t, st.Enqueue, &logs)
}

package queue_test

import (
	"io"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/queuetest"
)

func TestSpoolConformance(t *testing.T) {
	queuetest.Run(t, func(t *testing.T) queue.Store {
		sp, err := queue.Open(t.TempDir(), queue.SpoolConfig{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		require.NoError(t, err)
		t.Cleanup(func() { sp.Close() })
		return sp
	})
}

package journal_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit"

	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/journal"
	"github.com/mtakit/mtakit/queue/queuetest"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestConformance(t *testing.T) {
	for _, size := range []int64{0, 256 << 10} {
		name := "segment=default"
		if size != 0 {
			name = "segment=256KiB"
		}
		t.Run(name, func(t *testing.T) {
			queuetest.Run(t, func(t *testing.T) queue.Store {
				st, err := journal.Open(context.Background(), journal.Config{Dir: t.TempDir(), SegmentSize: size, Logger: quiet()})
				require.NoError(t, err)
				t.Cleanup(func() { st.Close() })
				return st
			})
		})
	}
}

// A Store is what mtakit.Server needs of its queue: a queue.Store the smtp
// package can accept into.
var _ mtakit.Store = (*journal.Store)(nil)

package jetstream

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/queuetest"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// embedded starts an embedded server for one test.
func embedded(t *testing.T) *Embedded {
	t.Helper()
	e, err := StartEmbedded(EmbeddedConfig{Dir: t.TempDir(), Logger: quiet()})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

// open opens a Store on url with a short ack wait.
func open(t *testing.T, url string, cfg Config) *Store {
	t.Helper()
	cfg.URL = url
	if cfg.AckWait == 0 {
		cfg.AckWait = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := Open(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

func TestConformance(t *testing.T) {
	queuetest.Run(t, func(t *testing.T) queue.Store {
		return open(t, embedded(t).URL(), Config{})
	})
}

package main

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPprofListener(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:6060", ":6060", "localhost:6060", "nonsense"} {
		_, err := servePprof(io.Discard, addr, slog.New(slog.DiscardHandler))
		assert.Error(t, err, "%s must be refused: profiles must never face the network", addr)
	}

	var out bytes.Buffer
	stop, err := servePprof(&out, "127.0.0.1:0", slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer stop()
	addr := strings.TrimSpace(strings.TrimPrefix(out.String(), "pprof listening on "))
	resp, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), "goroutine profile")
}

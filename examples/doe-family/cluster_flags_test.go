package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNATSURLs(t *testing.T) {
	for _, tt := range []struct{ in, want, err string }{
		{in: "nats://127.0.0.1:4222", want: "nats://127.0.0.1:4222"},
		{in: "nats://10.0.0.1:4222,10.0.0.2:4222, nats://10.0.0.3:4222", want: "nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222"},
		{in: "nats://[::1]:4222", want: "nats://[::1]:4222"},
		{in: "10.0.0.1:4222", err: "want nats://"},
		{in: "nats://", err: "no server"},
		{in: "nats://host", err: "want host:port"},
	} {
		got, err := natsURLs(tt.in)
		if tt.err != "" {
			assert.ErrorContains(t, err, tt.err, tt.in)
			continue
		}
		require.NoError(t, err, tt.in)
		assert.Equal(t, tt.want, got)
	}
}

func TestClusterFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		err  string
	}{
		{args: []string{"-queue", "nats://a:1", "-nats-embedded", "/tmp/x"}, err: "-queue and -nats-embedded"},
		{args: []string{"-queue", "a:1"}, err: "-queue: want nats://"},
		{args: []string{"-queue", "nats://a:1", "-nats-replicas", "7"}, err: "-nats-replicas"},
		{args: []string{"-queue", "nats://a:1", "-node", ""}, err: "-node"},
		{args: []string{"-nats-embedded", "/tmp/x", "-queue-timeout", "0s"}, err: "-queue-timeout"},
		{args: []string{"-queue", "nats://a:1,b:2", "-node", "mx1"}},
	} {
		cfg, err := parseFlags(tt.args, io.Discard)
		if tt.err != "" {
			assert.ErrorContains(t, err, tt.err, "%v", tt.args)
			continue
		}
		require.NoError(t, err, "%v", tt.args)
		assert.Equal(t, "mx1", cfg.node)
	}
}

// TestJournalFlag: -queue journal needs no -node, and excludes
// -nats-embedded like a cluster does; -journal-segment-size goes with it.
func TestJournalFlag(t *testing.T) {
	cfg, err := parseFlags([]string{"-queue", "journal", "-node", ""}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, queueJournal, cfg.queue)
	_, err = parseFlags([]string{"-queue", "journal", "-nats-embedded", "/tmp/x"}, io.Discard)
	assert.ErrorContains(t, err, "-queue and -nats-embedded")
	_, err = parseFlags([]string{"-queue", "jornal"}, io.Discard)
	assert.ErrorContains(t, err, "-queue: want nats://")

	cfg, err = parseFlags([]string{"-queue", "journal", "-journal-segment-size", "1048576"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, int64(1<<20), cfg.journalSegment)
	_, err = parseFlags([]string{"-journal-segment-size", "1048576"}, io.Discard)
	assert.ErrorContains(t, err, "only with -queue journal")
	_, err = parseFlags([]string{"-queue", "journal", "-journal-segment-size", "4096"}, io.Discard)
	assert.ErrorContains(t, err, "at least 65536")
}

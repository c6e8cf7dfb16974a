package queue

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// A message whose postq edits (a DKIM-Signature) are stored in its
// envelope, moved back to working so that the postq rules run again, must
// get them once: the rules run on the message as received, not on the
// message they already edited.
func TestMoveToWorkingDoesNotRepeatPostQEdits(t *testing.T) {
	const sig = "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; b=abc\r\n"
	tests := []struct {
		name string
		hold bool // the first postq run quarantines (edits kept with it)
	}{
		{"released from quarantine to working", true},
		{"deferred message moved to working", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first := true
			chain := &policy.Chain{Logger: quietLogger()}
			chain.PostQ("sign", func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
				m.Header.AddRaw([]byte(sig))
				if tt.hold && first {
					first = false
					return policy.Quarantine("hold")
				}
				return policy.Next()
			})
			h := newHarness(t, "", Config{Chain: chain})
			if !tt.hold {
				h.tr.script = func(rcpt string, n int) policy.Reply {
					if n == 0 {
						return reply(451, "4.4.1", "later")
					}
					return reply(250, "2.0.0", "OK")
				}
			}
			h.start()
			h.enqueue(newTx("m1", "a@example.org", "b@example.com"), testMsg)
			h.wait("m1")
			if tt.hold {
				require.Equal(t, "quarantine/hold", h.queueOf("m1"))
			} else {
				require.Equal(t, Deferred, h.queueOf("m1"))
			}
			require.NoError(t, h.sp.Move(context.Background(), "m1", Working))
			h.wait("m1")
			h.clock.Advance(time.Minute)
			require.Equal(t, "", h.queueOf("m1"), "delivered")
			ds := h.tr.deliveries()
			require.NotEmpty(t, ds)
			last := string(ds[len(ds)-1].Data)
			assert.Equal(t, 1, strings.Count(last, "DKIM-Signature:"), "postq edits applied once:\n%s", last)
			assert.Equal(t, sig+testMsg, last)
		})
	}
}

// A damaged length in an entry header (bit rot, a foreign file) makes the
// entry corrupt; it must never panic List, Show or the scheduler's Load.
func TestEntryHeaderWithHugeLengthIsCorrupt(t *testing.T) {
	tests := []struct{ name, head string }{
		{"max int64", "MTAQ2 7fffffffffffffff\n"},
		{"overflows start", "MTAQ2 7ffffffffffffff0\n"},
		{"beyond the file", "MTAQ2 0000000000100000\n"},
		{"negative", "MTAQ2 -000000000000001\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp, err := Open(t.TempDir(), SpoolConfig{Logger: quietLogger()})
			require.NoError(t, err)
			t.Cleanup(func() { sp.Close() })
			rec, err := encodeRecord(mustEnvelope(newTx("bad1", "a@example.org", "b@example.com")))
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(entryPath(filepath.Join(sp.root, Working), "bad1"), append([]byte(tt.head+testMsg), rec...), 0o640))
			l, err := sp.List(Working)
			require.NoError(t, err)
			require.Len(t, l, 1)
			assert.ErrorIs(t, l[0].Err, ErrCorrupt)
			_, _, _, err = sp.Load("bad1")
			assert.ErrorIs(t, err, ErrCorrupt)
		})
	}
}

// FuzzReadEntry: readEntry on any file content returns an envelope or an
// error, never panics, and what it accepts is consistent with the file.
func FuzzReadEntry(f *testing.F) {
	env := mustEnvelope(newTx("f1", "a@example.org", "b@example.com"))
	env.Size = int64(len(testMsg))
	rec, err := encodeRecord(env)
	if err != nil {
		f.Fatal(err)
	}
	good := append(append(entryHeader(int64(len(testMsg))), testMsg...), rec...)
	f.Add(good)
	f.Add(good[:len(good)-5])
	f.Add(append([]byte("MTAQ2 7fffffffffffffff\n"), good[entryHeadLen:]...))
	f.Add(append([]byte("MTAQ2 7ffffffffffffff0\n"), good[entryHeadLen:]...))
	f.Add([]byte("MTAQ2 "))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "f1.q")
		require.NoError(t, os.WriteFile(p, b, 0o600))
		fh, err := os.Open(p)
		require.NoError(t, err)
		defer fh.Close()
		env, err := readEntry(fh, "f1")
		if err != nil {
			return
		}
		if env.end > int64(len(b)) || int64(entryHeadLen)+env.Size > env.end {
			t.Fatalf("accepted entry with size %d end %d in %d bytes", env.Size, env.end, len(b))
		}
	})
}

// A record torn by a crash mid-append is ignored on load, and the next
// change overwrites it: the envelope read back is the new one, even when
// the torn record was longer than it.
func TestTornRecordIgnoredAndOverwritten(t *testing.T) {
	dir := t.TempDir()
	sp, err := Open(dir, SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	require.NoError(t, sp.Enqueue(context.Background(), newTx("t1", "a@example.org", "b@example.com"), newMessage(t, testMsg)))
	env, err := sp.readEnvelope(Working, "t1")
	require.NoError(t, err)
	env.LastError = strings.Repeat("long error ", 200)
	rec, err := encodeRecord(env)
	require.NoError(t, err)
	require.NoError(t, sp.Close())

	p := entryPath(filepath.Join(dir, Working), "t1")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.Write(rec[:len(rec)-7]) // the crash tore the append
	require.NoError(t, err)
	require.NoError(t, f.Close())

	sp, err = Open(dir, SpoolConfig{Logger: quietLogger()})
	require.NoError(t, err)
	defer sp.Close()
	got, err := sp.readEnvelope(Working, "t1")
	require.NoError(t, err)
	assert.Empty(t, got.LastError, "torn record ignored")
	require.NoError(t, sp.Move(context.Background(), "t1", Deferred))
	got, err = sp.readEnvelope(Deferred, "t1")
	require.NoError(t, err)
	assert.Empty(t, got.LastError)
	assert.Equal(t, 0, got.Attempts)
	_, _, m, err := sp.Load("t1")
	require.NoError(t, err)
	var b strings.Builder
	_, err = m.WriteTo(&b)
	require.NoError(t, err)
	m.Close()
	assert.Equal(t, testMsg, b.String())
}

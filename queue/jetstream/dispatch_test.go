package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/queuetest"
)

// TestDispatchLookupLagging: in a cluster the consumer may hand a message
// out before the stream leader, which answers lookups, has applied it (the
// consumer's leader is another server, a follower that applied the write
// first). dispatch must not ack it away then (an ack deletes it from the
// work-queue stream, and the acknowledged message is lost): it is handed
// out again, and delivered once the lookup sees it. The lagging lookup is
// injected: the first lookups of dispatch find nothing, or an older
// envelope than the one handed out.
func TestDispatchLookupLagging(t *testing.T) {
	for _, tc := range []struct {
		name string
		lie  func(c *current, err error) (*current, error)
	}{
		{"nothing yet", func(*current, error) (*current, error) {
			return nil, fmt.Errorf("%w: lagging leader", queue.ErrNotFound)
		}},
		{"older envelope", func(c *current, err error) (*current, error) {
			if err != nil {
				return c, err
			}
			old := *c
			old.seq--
			return &old, nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := open(t, embedded(t).URL(), Config{})
			var lookups atomic.Int32
			st.dispatchLookup = func(ctx context.Context, id string) (*current, error) {
				c, err := st.lookup(ctx, id)
				if lookups.Add(1) <= 2 {
					return tc.lie(c, err)
				}
				return c, err
			}
			queuetest.Add(t, st, "lagged", queue.Working, queuetest.Msg)
			rec := newRecorder()
			run(t, st, rec)
			assert.Equal(t, "lagged", wait(t, rec.ch, 10*time.Second, "the delivery of the message the lookup lagged"))
			assert.GreaterOrEqual(t, lookups.Load(), int32(3), "handed out again after each lagging lookup")
		})
	}
}

// TestBodyCorruptOnlyWhenSure: a body that cannot be read is corrupt (set
// aside) only after several reads over a few seconds all found it so; when
// the operation's time runs out before, the error is a temporary one, and
// the scheduler tries again later instead of setting the message aside (a
// replica behind the leader, a leader change, looks corrupt for a moment).
func TestBodyCorruptOnlyWhenSure(t *testing.T) {
	for _, tc := range []struct {
		timeout time.Duration
		corrupt bool
	}{
		{timeout: 500 * time.Millisecond, corrupt: false},
		{timeout: 10 * time.Second, corrupt: true},
	} {
		t.Run(tc.timeout.String(), func(t *testing.T) {
			st := open(t, embedded(t).URL(), Config{Timeout: tc.timeout})
			queuetest.Add(t, st, "nobody", queue.Working, queuetest.Msg)
			require.NoError(t, st.obj.Delete(context.Background(), "nobody"))
			start := time.Now()
			_, _, _, err := st.Load("nobody")
			require.Error(t, err)
			assert.Equal(t, tc.corrupt, errors.Is(err, queue.ErrCorrupt), "%v", err)
			if tc.corrupt {
				assert.GreaterOrEqual(t, time.Since(start), 750*time.Millisecond, "three reads, 0.25 and 0.5 s apart at least")
			}
		})
	}
}

// TestBodyStoredAcrossReconnectFails: when the connection drops and is
// made again while a body is stored, nats.go's ObjectStore.Put (before
// v1.55) drops the pending acknowledgements and may report success for
// chunks the servers never stored. Such an Add must fail (the SMTP client
// gets 451), never answer as if the body were safe.
func TestBodyStoredAcrossReconnectFails(t *testing.T) {
	st := open(t, embedded(t).URL(), Config{})
	env, err := queue.NewEnvelope(queuetest.NewTx("cut", "a@example.org", "b@example.com"), time.Now())
	require.NoError(t, err)
	line := strings.Repeat("x", 78) + "\r\n"
	err = st.Add(context.Background(), env, queue.Working, func(w io.Writer) (int64, error) {
		var n int64
		for i := 0; i < 6000; i++ { // 480 KiB: chunks stored before and after the cut
			if i == 3000 {
				if err := st.nc.ForceReconnect(); err != nil {
					return n, err
				}
			}
			k, err := io.WriteString(w, line)
			n += int64(k)
			if err != nil {
				return n, err
			}
		}
		return n, nil
	})
	require.Error(t, err, "a body stored across a reconnection is not trusted")
	assert.ErrorIs(t, err, errReconnected)
	_, _, _, err = st.Load("cut")
	assert.ErrorIs(t, err, queue.ErrNotFound, "no envelope: the message was not queued")
}

// TestBodyChunkMissing: a body read chunk by chunk (readObject) that
// misses a chunk its meta counts is not whole: corrupt, never a short
// message delivered.
func TestBodyChunkMissing(t *testing.T) {
	st := open(t, embedded(t).URL(), Config{})
	raw := queuetest.Msg + strings.Repeat(strings.Repeat("y", 78)+"\r\n", 4000) // 3 chunks
	queuetest.Add(t, st, "holed", queue.Working, raw)
	_, _, m, err := st.Load("holed")
	require.NoError(t, err, "whole, it reads back")
	assert.Equal(t, int64(len(raw)), m.Size())
	m.Close()
	// The second chunk of the object goes.
	ctx := context.Background()
	meta, err := st.objStream.GetLastMsgForSubject(ctx, "$O."+st.cfg.Bucket+".M.aG9sZWQ=")
	require.NoError(t, err)
	var info jetstream.ObjectInfo
	require.NoError(t, json.Unmarshal(meta.Data, &info))
	require.Equal(t, uint32(3), info.Chunks)
	subj := "$O." + st.cfg.Bucket + ".C." + info.NUID
	first, err := st.objStream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
	require.NoError(t, err)
	second, err := st.objStream.GetMsg(ctx, first.Sequence+1, jetstream.WithGetMsgSubject(subj))
	require.NoError(t, err)
	require.NoError(t, st.objStream.DeleteMsg(ctx, second.Sequence))
	_, _, _, err = st.Load("holed")
	assert.ErrorIs(t, err, queue.ErrCorrupt)
}

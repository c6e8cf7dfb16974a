package jetstream

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"
)

// errShortObject is the error of an object that is not whole: its chunks
// do not add up to what its meta says, or the meta is unreadable.
var errShortObject = errors.New("chunks do not match the object's meta")

// readObject copies the content of object name to w and checks it
// against the object's meta (size, chunks, digest). It reads the meta (the
// last message of its subject) and then each chunk (the next message of
// the object's chunk subject) with gets answered by the stream's leader
// (see leaderReads; direct gets with one replica), instead of
// ObjectStore.Get's ordered consumer: that consumer is created through
// the cluster's meta leader (none for seconds after a server's loss) on
// any replica of the stream (a lagging one ends the object early; one on
// a dead server never answers), which in TestClusterFaults held messages
// back for tens of seconds after a NATS node's SIGKILL. The error wraps
// jetstream.ErrObjectNotFound when the object (meta) is missing, and
// errShortObject or jetstream.ErrDigestMismatch when it is not whole.
func (s *Store) readObject(ctx context.Context, name string, w io.Writer) (int64, error) {
	meta, err := s.objStream.GetLastMsgForSubject(ctx, "$O."+s.cfg.Bucket+".M."+base64.URLEncoding.EncodeToString([]byte(name)))
	if err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, fmt.Errorf("%w: %s", jetstream.ErrObjectNotFound, name)
		}
		return 0, err
	}
	var info jetstream.ObjectInfo
	if err := json.Unmarshal(meta.Data, &info); err != nil {
		return 0, fmt.Errorf("%w: object %s: meta: %v", errShortObject, name, err)
	}
	if info.Deleted {
		return 0, fmt.Errorf("%w: %s (deleted)", jetstream.ErrObjectNotFound, name)
	}
	if info.Opts != nil && info.Opts.Link != nil {
		return 0, fmt.Errorf("%w: object %s is a link", errShortObject, name)
	}
	subj := "$O." + s.cfg.Bucket + ".C." + info.NUID
	h := sha256.New()
	var n int64
	seq := uint64(1)
	for range info.Chunks {
		m, err := s.objStream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return n, fmt.Errorf("%w: object %s: %d of %d bytes", errShortObject, name, n, info.Size)
			}
			return n, err
		}
		h.Write(m.Data)
		k, err := w.Write(m.Data)
		n += int64(k)
		if err != nil {
			return n, err
		}
		seq = m.Sequence + 1
	}
	if uint64(n) != info.Size {
		return n, fmt.Errorf("%w: object %s: %d of %d bytes", errShortObject, name, n, info.Size)
	}
	if info.Digest != "" && jetstream.GetObjectDigestValue(h) != info.Digest {
		return n, fmt.Errorf("%w: object %s", jetstream.ErrDigestMismatch, name)
	}
	return n, nil
}

package queue

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mtakit/mtakit/policy"
)

func FuzzDecodeEnvelope(f *testing.F) {
	tx := newTx("seed1", "a@example.org", "b@example.com", "c@example.com")
	tx.Rcpts[0].Notify = []string{"SUCCESS"}
	tx.Rcpts[0].ORCPT = "rfc822;b@example.com"
	env := mustEnvelope(tx)
	good, err := env.Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte(`{"v":2,"id":"x","size":10,"head":"QTogYg0KDQo=","body_off":4,"rcpts":[{"addr":{"local":"a"},"state":"pending"}]}`))
	f.Add([]byte(`{"v":2,"id":"x","size":1,"body_off":4,"rcpts":[{"addr":{"local":"a"},"state":"pending"}]}`))
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`{"v":2,"id":"../x"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := DecodeEnvelope(b)
		if err != nil {
			return
		}
		// What decodes is safe to use: file names stay in their directory,
		// the transaction rebuilds, and it survives a round trip.
		if !validID(env.ID) || strings.ContainsAny(env.ID, "/\\") {
			t.Fatalf("unsafe name accepted: %q", env.ID)
		}
		if env.BodyOff < 0 || env.BodyOff > env.Size || env.Head == nil && env.BodyOff != 0 {
			t.Fatalf("bad body offset accepted: %d of %d", env.BodyOff, env.Size)
		}
		tx := env.Transaction()
		if len(tx.Rcpts) != len(env.Rcpts) || len(tx.Rcpts) == 0 {
			t.Fatalf("recipients lost")
		}
		again, err := env.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeEnvelope(again); err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v", err)
		}
	})
}

// unquoteMboxrd reverses mboxrd quoting of one message body.
var quoted = regexp.MustCompile(`(?m)^>(>*From )`)

func FuzzMboxQuoting(f *testing.F) {
	for _, s := range []string{"From x\n", ">From\n>>From y\n", "a\nFrom b\nFro", "From", "\n\n>>>From \n", "FFrom \nFrom"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		if bytes.IndexByte(in, '\r') >= 0 {
			return
		}
		var out bytes.Buffer
		q := &fromQuoter{w: &out, bol: true}
		n := int(chunk%16) + 1
		for i := 0; i < len(in); i += n {
			q.Write(in[i:min(i+n, len(in))])
		}
		q.flush()
		if regexp.MustCompile(`(?m)^From `).Match(out.Bytes()) {
			t.Fatalf("unquoted From line in %q", out.Bytes())
		}
		if got := quoted.ReplaceAll(out.Bytes(), []byte("$1")); !bytes.Equal(got, in) {
			t.Fatalf("round trip: %q -> %q -> %q", in, out.Bytes(), got)
		}
	})
}

func FuzzLFWriter(f *testing.F) {
	for _, s := range []string{"a\r\nb\r\n", "\r\r\n\r", "x\ry", "\r"} {
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		var out bytes.Buffer
		w := &lfWriter{w: &out}
		n := int(chunk%8) + 1
		for i := 0; i < len(in); i += n {
			w.Write(in[i:min(i+n, len(in))])
		}
		w.flush()
		if want := bytes.ReplaceAll(in, []byte("\r\n"), []byte("\n")); !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("%q: got %q want %q", in, out.Bytes(), want)
		}
	})
}

var _ = policy.Address{}

func FuzzParseRecords(f *testing.F) {
	env := mustEnvelope(newTx("r1", "a@example.org", "b@example.com"))
	rec, err := encodeRecord(env)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(rec)
	f.Add(append(append([]byte{}, rec...), rec[:len(rec)-3]...))
	f.Add([]byte("E 00000002 00000000\n{}"))
	f.Add([]byte("E zzzzzzzz 00000000\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		last, valid := parseRecords(b)
		if valid < 0 || valid > len(b) {
			t.Fatalf("valid prefix %d out of range %d", valid, len(b))
		}
		if (last == nil) != (valid == 0) {
			t.Fatalf("last %q with valid prefix %d", last, valid)
		}
		// Whatever follows a valid prefix never changes what it says.
		again, v2 := parseRecords(b[:valid])
		if v2 != valid || !bytes.Equal(again, last) {
			t.Fatalf("prefix parses differently")
		}
	})
}

// mustEnvelope is newEnvelope at a fixed time, for tests whose transaction
// holds no value that could fail to encode.
func mustEnvelope(tx *policy.Transaction) *Envelope {
	env, err := newEnvelope(tx, time.Unix(1700000000, 0))
	if err != nil {
		panic(err)
	}
	return env
}

package delegate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// fakeClamd speaks clamd's side of INSTREAM, PING and VERSION.
type fakeClamd struct {
	reply  string // reply to INSTREAM, without the NUL
	limit  int    // > 0: after this many bytes answer the size-limit error and close
	silent bool   // never answer

	mu     sync.Mutex
	got    [][]byte // data received per INSTREAM
	chunks []int    // chunk lengths of the last INSTREAM
	wg     sync.WaitGroup
}

func startClamd(t *testing.T, network string, fc *fakeClamd) string {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "clamd.sock")
	}
	ln, err := net.Listen(network, addr)
	require.NoError(t, err)
	done := make(chan struct{})
	var conns sync.Map
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			fc.wg.Add(1)
			go func() { defer fc.wg.Done(); fc.serve(c, done) }()
		}
	}()
	t.Cleanup(func() {
		close(done)
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		fc.wg.Wait()
	})
	return ln.Addr().String()
}

func (fc *fakeClamd) serve(c net.Conn, done chan struct{}) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	cmd, err := br.ReadString(0)
	if err != nil {
		return
	}
	switch cmd {
	case "zPING\x00":
		io.WriteString(c, "PONG\x00")
		return
	case "zVERSION\x00":
		io.WriteString(c, "ClamAV 1.4.6/fake\x00")
		return
	case "zINSTREAM\x00":
	default:
		io.WriteString(c, "UNKNOWN COMMAND\x00")
		return
	}
	var data []byte
	var chunks []int
	for {
		var l [4]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(l[:])
		chunks = append(chunks, int(n))
		if n == 0 {
			break
		}
		if fc.limit > 0 && len(data)+int(n) > fc.limit {
			io.WriteString(c, "INSTREAM size limit exceeded. ERROR\x00")
			return
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(br, buf); err != nil {
			return
		}
		data = append(data, buf...)
	}
	fc.mu.Lock()
	fc.got = append(fc.got, data)
	fc.chunks = chunks
	fc.mu.Unlock()
	if fc.silent {
		<-done
		return
	}
	io.WriteString(c, fc.reply+"\x00")
}

func TestClamAVScanFake(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 25_000) // 250 000 bytes: several chunks
	tests := []struct {
		name      string
		fc        *fakeClamd
		network   string
		timeout   time.Duration
		wantVirus string
		wantErr   error
		wantClamd bool // want a *ClamdError
	}{
		{name: "clean", fc: &fakeClamd{reply: "stream: OK"}},
		{name: "clean over unix", fc: &fakeClamd{reply: "stream: OK"}, network: "unix"},
		{name: "found", fc: &fakeClamd{reply: "stream: Eicar-Test-Signature.UNOFFICIAL FOUND"}, wantVirus: "Eicar-Test-Signature.UNOFFICIAL"},
		{name: "error", fc: &fakeClamd{reply: "stream: Can't allocate memory ERROR"}, wantClamd: true},
		{name: "garbage", fc: &fakeClamd{reply: "hello"}, wantClamd: true},
		{name: "size limit", fc: &fakeClamd{limit: 100_000}, wantErr: ErrSizeLimit},
		{name: "silent", fc: &fakeClamd{silent: true}, timeout: 300 * time.Millisecond, wantErr: context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			network := tc.network
			if network == "" {
				network = "tcp"
			}
			clam := &ClamAV{Network: network, Address: startClamd(t, network, tc.fc), Timeout: tc.timeout}
			virus, err := clam.Scan(context.Background(), bytes.NewReader(data))
			switch {
			case tc.wantErr != nil:
				assert.ErrorIs(t, err, tc.wantErr)
			case tc.wantClamd:
				var ce *ClamdError
				assert.True(t, errors.As(err, &ce), "%v", err)
			default:
				require.NoError(t, err)
				assert.Equal(t, tc.wantVirus, virus)
				tc.fc.mu.Lock()
				defer tc.fc.mu.Unlock()
				require.Len(t, tc.fc.got, 1)
				assert.Equal(t, data, tc.fc.got[0], "clamd received the data unchanged")
				assert.Equal(t, 0, tc.fc.chunks[len(tc.fc.chunks)-1], "the stream ends with a zero-length chunk")
				for _, n := range tc.fc.chunks {
					assert.LessOrEqual(t, n, 64<<10)
				}
			}
			if err != nil {
				assert.Empty(t, virus)
			}
		})
	}
}

func TestClamAVDownAndPing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	down := ln.Addr().String()
	ln.Close()
	clam := &ClamAV{Address: down}
	_, err = clam.Scan(context.Background(), strings.NewReader("x"))
	assert.Error(t, err)
	assert.Error(t, clam.Ping(context.Background()))

	up := &ClamAV{Address: startClamd(t, "tcp", &fakeClamd{reply: "stream: OK"})}
	assert.NoError(t, up.Ping(context.Background()))
	v, err := up.Version(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "ClamAV 1.4.6/fake", v)
}

func TestClamAVRules(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	down := closed.Addr().String()
	closed.Close()
	clean := startClamd(t, "tcp", &fakeClamd{reply: "stream: OK"})
	infected := startClamd(t, "tcp", &fakeClamd{reply: "stream: Eicar-Test-Signature.UNOFFICIAL FOUND"})

	tests := []struct {
		name       string
		addr       string
		failOpen   bool
		quarantine string
		want       policy.Verdict
	}{
		{"clean", clean, false, "virus_q", policy.Next()},
		{"infected to quarantine", infected, false, "virus_q", policy.QuarantineBecause("virus_q", "virus: Eicar-Test-Signature.UNOFFICIAL")},
		{"infected refused", infected, false, "", policy.Deny(554, "5.7.1", "Message contains a virus")},
		{"down", down, false, "virus_q", policy.Deny(451, "4.7.1", replyUnavailable.Text)},
		{"down, fail-open", down, true, "virus_q", policy.Next()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clam := &ClamAV{Address: tc.addr, FailOpen: tc.failOpen, Logger: testLogger(t)}
			m := newMessage(t, rawMessage("x", "body"))
			v := ClamAVRule(clam, tc.quarantine)(context.Background(), newTx("t", "a@sender.example", "b@rcpt.example"), m)
			assert.Equal(t, tc.want.Kind, v.Kind, "%v", v)
			assert.Equal(t, tc.want.Reply, v.Reply)
			assert.Equal(t, tc.want.Queue, v.Queue)
		})
	}

	// ScanRule hands the virus name to then.
	var got string
	rule := ScanRule(&ClamAV{Address: infected}, func(_ context.Context, _ *policy.Transaction, _ *policy.Message, virus string) policy.Verdict {
		got = virus
		return policy.Accept()
	})
	v := rule(context.Background(), newTx("t", "a@sender.example", "b@rcpt.example"), newMessage(t, rawMessage("x", "body")))
	assert.Equal(t, policy.KindAccept, v.Kind)
	assert.Equal(t, "Eicar-Test-Signature.UNOFFICIAL", got)
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		reply   string
		virus   string
		errIs   error
		clamErr bool
	}{
		{reply: "stream: OK", virus: ""},
		{reply: "stream: OK\x00"},
		{reply: "stream: OK\n"},
		{reply: "1: stream: OK"},
		{reply: "stream: Eicar-Test-Signature.UNOFFICIAL FOUND", virus: "Eicar-Test-Signature.UNOFFICIAL"},
		{reply: "stream: Win.Test.EICAR_HDB-1 FOUND\x00", virus: "Win.Test.EICAR_HDB-1"},
		{reply: "INSTREAM size limit exceeded. ERROR", errIs: ErrSizeLimit},
		{reply: "stream: lstat() failed: No such file or directory. ERROR", clamErr: true},
		{reply: "stream:  FOUND", clamErr: true},
		{reply: "", clamErr: true},
		{reply: "PONG", clamErr: true},
	}
	for _, tc := range tests {
		virus, err := parseReply(tc.reply)
		switch {
		case tc.errIs != nil:
			assert.ErrorIs(t, err, tc.errIs, "%q", tc.reply)
		case tc.clamErr:
			var ce *ClamdError
			assert.True(t, errors.As(err, &ce), "%q: %v", tc.reply, err)
		default:
			assert.NoError(t, err, "%q", tc.reply)
			assert.Equal(t, tc.virus, virus, "%q", tc.reply)
		}
	}
}

// TestClamAVNilLoggerIsDefault: nil Logger means slog.Default().
func TestClamAVNilLoggerIsDefault(t *testing.T) {
	assert.Same(t, slog.Default(), (&ClamAV{}).log())
	l := slog.New(slog.DiscardHandler)
	assert.Same(t, l, (&ClamAV{Logger: l}).log())
}

package smtp

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// lockedBuffer is a bytes.Buffer the server's goroutines may log into
// while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLogLines pins the log records of one accepted message: their
// fields, in order, and their source (the line that logs, not a helper),
// whatever way the server builds them.
func TestLogLines(t *testing.T) {
	var out lockedBuffer
	log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{AddSource: true,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey:
				return slog.Attr{}
			case slog.SourceKey:
				src := a.Value.Any().(*slog.Source)
				return slog.String("source", filepath.Base(src.File))
			}
			return a
		}}))
	h := start(t, Config{Logger: log})
	body := "Subject: log\r\n\r\nHello.\r\n"
	require.NoError(t, sendMail(t, h.addr(), "s@client.test", []string{"a@mx.test"}, body))
	// The queued line is written before the 250 sendMail waited for.
	require.Contains(t, out.String(), "msg=queued")

	ids := regexp.MustCompile(` (conn|id)=[0-9a-v]{21}`)
	remote := regexp.MustCompile(` remote=127\.0\.0\.1:[0-9]+`)
	var got []string
	for _, line := range strings.Split(out.String(), "\n") {
		line = ids.ReplaceAllString(line, " $1=ID")
		line = remote.ReplaceAllString(line, " remote=ADDR")
		if strings.Contains(line, "msg=helo") || strings.Contains(line, "msg=mail") || strings.Contains(line, "msg=rcpt") ||
			strings.Contains(line, "msg=preq") || strings.Contains(line, "msg=queued") {
			got = append(got, line)
		}
	}
	size := len(body)
	assert.Equal(t, []string{
		`level=INFO source=session.go msg=helo conn=ID listener=mta remote=ADDR helo=client.test verdict=next`,
		`level=INFO source=session.go msg=mail conn=ID listener=mta remote=ADDR id=ID from=<s@client.test> verdict=next`,
		`level=INFO source=session.go msg=rcpt conn=ID listener=mta remote=ADDR id=ID to=<a@mx.test> verdict=accept rule=all`,
		`level=INFO source=data.go msg=preq conn=ID listener=mta remote=ADDR id=ID verdict=next size=` + strconv.Itoa(size),
		`level=INFO source=data.go msg=queued conn=ID listener=mta remote=ADDR id=ID from=<s@client.test> rcpts=1 size=` + strconv.Itoa(size) + ` quarantine=""`,
	}, got)
}

package milterd_test

import (
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/milterd"
)

// txn is one SMTP transaction as a milter client (the MTA) reports it.
type txn struct {
	clientAddr string // default 192.0.2.10
	clientName string // reverse name; default client.example.net
	helo       string // default client.example.net
	from       string
	rcpts      []string
	macros     map[milter.MacroName]string // set before the connect stage
	raw        string                      // the message, CRLF line ends
}

// outcome is what the milter answered.
type outcome struct {
	stage string         // the stage that answered with act: "connect" ... "eom"
	act   *milter.Action // its final answer
	mods  []milter.ModifyAction
}

// run plays t against the milter d with go-milter's client.
func run(t *testing.T, d *milterd.Daemon, tx txn) outcome {
	t.Helper()
	if tx.clientAddr == "" {
		tx.clientAddr = "192.0.2.10"
	}
	if tx.clientName == "" {
		tx.clientName = "client.example.net"
	}
	if tx.helo == "" {
		tx.helo = "client.example.net"
	}
	client := milter.NewClient(d.Network, d.Address,
		milter.WithReadTimeout(30*time.Second), milter.WithWriteTimeout(30*time.Second))
	macros := milter.NewMacroBag()
	macros.Set(milter.MacroMTAFQDN, "mx.mtakit.test")
	macros.Set(milter.MacroDaemonName, "mtakit")
	macros.Set(milter.MacroQueueId, "TESTQID1")
	for k, v := range tx.macros {
		macros.Set(k, v)
	}
	s, err := client.Session(macros)
	require.NoError(t, err)
	defer s.Close()

	step := func(stage string) func(*milter.Action, error) (outcome, bool) {
		return func(act *milter.Action, err error) (outcome, bool) {
			t.Helper()
			require.NoError(t, err, stage)
			if act.Type != milter.ActionContinue {
				return outcome{stage: stage, act: act}, true
			}
			return outcome{}, false
		}
	}
	if o, done := step("connect")(s.Conn(tx.clientName, milter.FamilyInet, 25, tx.clientAddr)); done {
		return o
	}
	if o, done := step("helo")(s.Helo(tx.helo)); done {
		return o
	}
	macros.Set(milter.MacroMailAddr, tx.from)
	if o, done := step("mail")(s.Mail("<"+tx.from+">", "")); done {
		return o
	}
	for _, r := range tx.rcpts {
		macros.Set(milter.MacroRcptAddr, r)
		if o, done := step("rcpt")(s.Rcpt("<"+r+">", "")); done {
			return o
		}
	}
	if o, done := step("data")(s.DataStart()); done {
		return o
	}
	head, body, ok := strings.Cut(tx.raw, "\r\n\r\n")
	require.True(t, ok, "message without a header/body separator")
	for _, f := range unfoldFields(head) {
		name, value, _ := strings.Cut(f, ":")
		if o, done := step("header")(s.HeaderField(name, strings.TrimPrefix(value, " "), nil)); done {
			return o
		}
	}
	if o, done := step("eoh")(s.HeaderEnd()); done {
		return o
	}
	mods, act, err := s.BodyReadFrom(strings.NewReader(body))
	require.NoError(t, err, "body/eom")
	return outcome{stage: "eom", act: act, mods: mods}
}

// unfoldFields splits a header block into fields, keeping folded
// continuation lines (joined with CRLF) in their field.
func unfoldFields(head string) []string {
	var fields []string
	for _, line := range strings.Split(head, "\r\n") {
		if (strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")) && len(fields) > 0 {
			fields[len(fields)-1] += "\r\n" + line
			continue
		}
		fields = append(fields, line)
	}
	return fields
}

func message(from, to, subject, body string, extra ...string) string {
	var b strings.Builder
	b.WriteString("From: <" + from + ">\r\n")
	b.WriteString("To: <" + to + ">\r\n")
	b.WriteString("Subject: " + subject + "\r\n")
	b.WriteString("Date: Fri, 04 Dec 2026 20:00:00 +0000\r\n")
	b.WriteString("Message-ID: <" + strings.ReplaceAll(subject, " ", ".") + "@mtakit.test>\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n" + body)
	return b.String()
}

// headersSet returns the header fields the milter added, inserted or
// changed to a value. (A change of a field the message does not have adds
// it, as in Sendmail: rspamd sets X-Spam that way.)
func headersSet(mods []milter.ModifyAction) map[string]string {
	out := map[string]string{}
	for _, m := range mods {
		switch m.Type {
		case milter.ActionAddHeader, milter.ActionInsertHeader, milter.ActionChangeHeader:
			if m.HeaderValue != "" {
				out[m.HeaderName] = m.HeaderValue
			}
		}
	}
	return out
}

func TestRspamd(t *testing.T) {
	start := time.Now()
	d := milterd.Rspamd(t, milterd.RspamdConfig{})
	t.Logf("rspamd ready at %s after %v", d.Spec(), time.Since(start))

	body := "Hello,\r\nthis is an ordinary message about the weekend.\r\n"
	tests := []struct {
		name      string
		raw       string
		wantType  milter.ActionType
		wantCode  uint16
		wantReply string
		wantHdr   []string // header fields that must be added
	}{
		{name: "clean", raw: message("alice@example.org", "bob@example.com", "weekend", body),
			wantType: milter.ActionAccept, wantHdr: []string{"X-Spamd-Result", "X-Rspamd-Server", "X-Rspamd-Queue-Id"}},
		{name: "gtube", raw: message("alice@example.org", "bob@example.com", "gtube", body+milterd.GTUBE+"\r\n"),
			wantType: milter.ActionRejectWithCode, wantCode: 554, wantReply: "554 5.7.1 Gtube pattern"},
		{name: "soft reject", raw: message("alice@example.org", "bob@example.com", "soft", body, milterd.SoftRejectHeader+": soft-reject"),
			wantType: milter.ActionRejectWithCode, wantCode: 451, wantReply: "451 4.7.1 " + milterd.SoftRejectMessage},
		{name: "add header", raw: message("alice@example.org", "bob@example.com", "spammy", body+milterd.GTUBEAddHeader+"\r\n"),
			wantType: milter.ActionAccept, wantHdr: []string{"X-Spam"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := run(t, d, txn{from: "alice@example.org", rcpts: []string{"bob@example.com"}, raw: tc.raw})
			t.Logf("stage %s action %v mods %+v", o.stage, o.act, o.mods)
			assert.Equal(t, "eom", o.stage)
			assert.Equal(t, tc.wantType, o.act.Type, "%v", o.act)
			if tc.wantCode != 0 {
				assert.Equal(t, tc.wantCode, o.act.SMTPCode)
			}
			if tc.wantReply != "" {
				assert.Contains(t, o.act.SMTPReply, tc.wantReply)
			}
			added := headersSet(o.mods)
			for _, h := range tc.wantHdr {
				assert.Contains(t, added, h)
			}
		})
	}
}

package milterd_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/internal/dnstest"
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

// dkimRecord is the DNS TXT record publishing key's public half.
func dkimRecord(t *testing.T, key *rsa.PrivateKey) string {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	require.NoError(t, err)
	return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
}

// withField puts a header field the milter inserted on top of raw. Milters
// fold with a bare LF (libmilter's convention); the message keeps CRLF.
func withField(name, value, raw string) string {
	value = strings.ReplaceAll(strings.ReplaceAll(value, "\r\n", "\n"), "\n", "\r\n")
	return name + ": " + value + "\r\n" + raw
}

// dkimpyVerify has dkimpy verify signed with the key record txt; it returns
// "pass" or "fail".
func dkimpyVerify(t *testing.T, signed, txt string) string {
	t.Helper()
	py := "/usr/bin/python3"
	if exec.Command(py, "-c", "import dkim").Run() != nil {
		msg := "python3-dkim (dkimpy) is not installed (apt-get install python3-dkim)"
		if os.Getenv("MTAKIT_INTEGRATION") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	f := filepath.Join(t.TempDir(), "key.txt")
	require.NoError(t, os.WriteFile(f, []byte(txt), 0o600))
	cmd := exec.Command(py, filepath.Join("..", "..", "auth", "testdata", "dkim", "dkimpy.py"), "verify", f)
	cmd.Stdin = strings.NewReader(signed)
	out, _ := cmd.Output()
	return strings.TrimSpace(string(out))
}

func TestOpenDKIM(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	txt := dkimRecord(t, key)
	dns := dnstest.New(t, `sel1._domainkey.example.com. TXT "`+txt+`"`)
	start := time.Now()
	d := milterd.OpenDKIM(t, milterd.OpenDKIMConfig{Domain: "example.com", Selector: "sel1", Key: key, DNS: dns.Addr()})
	t.Logf("opendkim ready at %s after %v", d.Spec(), time.Since(start))

	raw := message("alice@example.com", "bob@example.org", "signed by opendkim", "Hello Bob,\r\nsee you on Sunday.\r\n")

	// From 127.0.0.1 (InternalHosts' default) mail of example.com is signed.
	o := run(t, d, txn{clientAddr: "127.0.0.1", clientName: "localhost", from: "alice@example.com", rcpts: []string{"bob@example.org"}, raw: raw})
	require.Equal(t, "eom", o.stage)
	require.NotEqual(t, milter.ActionRejectWithCode, o.act.Type, "%v", o.act)
	sig, ok := headersSet(o.mods)["DKIM-Signature"]
	require.True(t, ok, "no DKIM-Signature in %+v", o.mods)
	assert.Contains(t, sig, "d=example.com")
	assert.Contains(t, sig, "s=sel1")
	signed := withField("DKIM-Signature", sig, raw)
	assert.Equal(t, "pass", dkimpyVerify(t, signed, txt), "dkimpy verifies opendkim's signature")
	assert.Equal(t, "fail", dkimpyVerify(t, strings.Replace(signed, "Sunday", "Monday", 1), txt))

	// From elsewhere, but authenticated ({auth_type}, {auth_authen} at
	// MAIL), it is signed too: submission.
	o = run(t, d, txn{from: "alice@example.com", rcpts: []string{"bob@example.org"}, raw: raw,
		macros: map[milter.MacroName]string{milter.MacroAuthType: "PLAIN", milter.MacroAuthAuthen: "alice"}})
	require.Equal(t, "eom", o.stage)
	authSig, ok := headersSet(o.mods)["DKIM-Signature"]
	require.True(t, ok, "an authenticated sender's mail is not signed: %+v", o.mods)
	assert.Equal(t, "pass", dkimpyVerify(t, withField("DKIM-Signature", authSig, raw), txt))

	// From elsewhere the signature is verified, against the key served by
	// the loopback DNS server, and the result added.
	queries := dns.Queries()
	for _, tc := range []struct {
		name, raw, want string
	}{
		{"pass", signed, "dkim=pass"},
		{"tampered", strings.Replace(signed, "Sunday", "Monday", 1), "dkim=fail"},
		{"unsigned", raw, "dkim=none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := run(t, d, txn{from: "alice@example.com", rcpts: []string{"bob@example.org"}, raw: tc.raw})
			require.Equal(t, "eom", o.stage)
			ar, ok := headersSet(o.mods)["Authentication-Results"]
			require.True(t, ok, "no Authentication-Results in %+v (%v)", o.mods, o.act)
			// libmilter's header values keep the space after the colon.
			assert.True(t, strings.HasPrefix(ar, " opendkim.test;"), ar)
			assert.Contains(t, ar, tc.want)
			_, signed := headersSet(o.mods)["DKIM-Signature"]
			assert.False(t, signed, "a stranger's mail is verified, not signed")
		})
	}
	assert.Greater(t, dns.Queries(), queries, "opendkim asked the loopback DNS server for the key")
}

func TestClamavMilter(t *testing.T) {
	clean := message("alice@example.org", "bob@example.com", "clean", "Nothing to see here.\r\n")
	infected := message("alice@example.org", "bob@example.com", "infected", "Here it is:\r\n"+milterd.EICAR+"\r\n")
	tests := []struct {
		onInfected string
		rejectMsg  string
		wantType   milter.ActionType
		wantCode   uint16
		wantReply  string
		wantQuar   bool
	}{
		{onInfected: "Reject", wantType: milter.ActionReject},
		{onInfected: "Reject", rejectMsg: "Virus found: %v", wantType: milter.ActionRejectWithCode, wantCode: 550,
			wantReply: "Virus found: Eicar-Test-Signature.UNOFFICIAL"},
		{onInfected: "Quarantine", wantType: milter.ActionAccept, wantQuar: true},
		{onInfected: "Blackhole", wantType: milter.ActionDiscard},
	}
	for _, tc := range tests {
		t.Run(tc.onInfected+"/"+tc.rejectMsg, func(t *testing.T) {
			start := time.Now()
			d := milterd.ClamavMilter(t, milterd.ClamavMilterConfig{OnInfected: tc.onInfected, RejectMsg: tc.rejectMsg})
			t.Logf("clamd and clamav-milter ready at %s after %v", d.Spec(), time.Since(start))

			o := run(t, d, txn{from: "alice@example.org", rcpts: []string{"bob@example.com"}, raw: clean})
			t.Logf("clean: stage %s action %v mods %+v", o.stage, o.act, o.mods)
			require.Equal(t, "eom", o.stage)
			assert.Equal(t, milter.ActionAccept, o.act.Type, "%v", o.act)
			set := headersSet(o.mods)
			assert.Equal(t, "Clean", set["X-Virus-Status"])
			assert.Contains(t, set["X-Virus-Scanned"], "clamav.test")

			o = run(t, d, txn{from: "alice@example.org", rcpts: []string{"bob@example.com"}, raw: infected})
			t.Logf("infected: stage %s action %v mods %+v", o.stage, o.act, o.mods)
			require.Equal(t, "eom", o.stage)
			assert.Equal(t, tc.wantType, o.act.Type, "%v", o.act)
			if tc.wantCode != 0 {
				assert.Equal(t, tc.wantCode, o.act.SMTPCode)
				assert.Contains(t, o.act.SMTPReply, tc.wantReply)
			}
			quarantined := false
			for _, m := range o.mods {
				quarantined = quarantined || m.Type == milter.ActionQuarantine
			}
			assert.Equal(t, tc.wantQuar, quarantined, "%+v", o.mods)
		})
	}
}

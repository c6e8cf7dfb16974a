package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chromiumPath finds Debian's chromium (or Chrome), skipping the test
// without it unless MTAKIT_INTEGRATION=1.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("MTAKIT_INTEGRATION") == "1" {
		t.Fatal("chromium is required under MTAKIT_INTEGRATION=1 (apt-get install chromium)")
	}
	t.Skip("chromium not installed (apt-get install -y --no-install-recommends chromium); skipping the console's browser test")
	return ""
}

// startClamAV starts a private clamd and clamsmtpd (as TestAntivirus
// does) and returns the address of clamsmtpd and of our receiver.
func startClamAV(t *testing.T) (clamsmtpd, recv string) {
	t.Helper()
	for _, tool := range []string{"clamd", "clamsmtpd"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err2 := os.Stat("/usr/sbin/" + tool); err2 != nil {
				if os.Getenv("MTAKIT_INTEGRATION") == "1" {
					t.Fatalf("%s is required under MTAKIT_INTEGRATION=1: %v", tool, err)
				}
				t.Skipf("%s not installed (apt-get install clamav-daemon clamsmtp clamav); skipping", tool)
			}
		}
	}
	return runClamAV(t)
}

const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// eicarAttached is a message with EICAR in an attachment (eicar.com).
func eicarAttached(from, to, subject string) string {
	return "From: <" + from + ">\r\nTo: <" + to + ">\r\nSubject: " + subject + "\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n" +
		"Message-ID: <hostile@test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nPlease open the attachment.\r\n" +
		"--b\r\nContent-Type: application/octet-stream; name=eicar.com\r\nContent-Disposition: attachment; filename=eicar.com\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString([]byte(eicar)) + "\r\n--b--\r\n"
}

var consoleAddrRE = regexp.MustCompile(`console listening on (\S+)`)

// TestConsoleInBrowser drives the web console of a running doe-family in
// a headless Chromium: EICAR sent over SMTP goes through the real
// clamsmtpd and clamd into virus_q, where the console shows it; one
// message is released (and lands in the Maildir), one deleted; the
// overview's chart has its points; a wrong password and a form without
// its CSRF token are refused. It saves a screenshot of each page (in
// MTAKIT_CONSOLE_SCREENSHOTS when set, as docs/console was made).
func TestConsoleInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	clamsmtpd, recv := startClamAV(t)
	e := newEnv(t, "-clamav", clamsmtpd, "-receiver", recv, "-console", "127.0.0.1:0", "-admins", "john@doe-family.com")
	m := consoleAddrRE.FindStringSubmatch(e.stdout.String())
	require.NotNil(t, m, "no console address in %s", e.stdout.String())
	base := "http://" + m[1] + "/"

	// The mail: three infected messages (the first with a hostile
	// subject), a clean one, one refused (relaying), one deferred (the
	// relayhost answers 451).
	// The hostile one carries EICAR as an attachment: with "<script>" in
	// its header, clamd takes a plain body for HTML and misses the
	// signature there.
	hostile := `virus <script>alert("owned")</script>`
	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"},
		eicarAttached("someone@example.org", "jane@doe-family.com", hostile)))
	for _, subject := range []string{"virus to release", "virus to delete"} {
		require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"},
			message("someone@example.org", "jane@doe-family.com", subject, eicar)))
	}
	require.NoError(t, send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"jane@doe-family.com"},
		message("someone@example.org", "jane@doe-family.com", "hello", "a clean message")))
	waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 1)
	err := send(t, e.listen, "client.example.org", false, "someone@example.org", []string{"victim@other.test"},
		message("someone@example.org", "victim@other.test", "relay", "x"))
	code, _ := smtpCode(t, err)
	require.Equal(t, 554, code)
	e.sink.fail.Store(1 << 20)
	require.NoError(t, send(t, e.submission, "laptop", true, "john@doe-family.com", []string{"friend@example.net"},
		message("john@doe-family.com", "friend@example.net", "see you", "later")))
	quarantined := func() []string {
		q, _ := filepath.Glob(filepath.Join(e.spool, "quarantine", "virus_q", "*"))
		return q
	}
	require.Len(t, quarantined(), 3, "the EICAR messages are in virus_q")

	shots := os.Getenv("MTAKIT_CONSOLE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(shots, 0o755))

	alloc, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("no-default-browser-check", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1100, 820))
	defer cancel()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	do := func(steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		require.NoError(t, chromedp.Do(ctx, steps...))
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		require.NoError(t, err, sel)
		return s
	}
	eval := func(expr string, out any) {
		t.Helper()
		switch p := out.(type) {
		case *int:
			v, err := chromedp.Run(ctx, chromedp.Evaluate[int](expr))
			require.NoError(t, err, expr)
			*p = v
		case *string:
			v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
			require.NoError(t, err, expr)
			*p = v
		case *[]int:
			v, err := chromedp.Run(ctx, chromedp.Evaluate[[]int](expr))
			require.NoError(t, err, expr)
			*p = v
		default:
			t.Fatalf("eval: %T", out)
		}
	}
	// submit clicks a form's button (or a link) and waits for the page it leads to;
	// it returns the status of that page.
	submit := func(sel string) int64 {
		t.Helper()
		resp, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(sel)))
		require.NoError(t, err, sel)
		return resp.Status
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644))
	}

	// Nothing without a session: the overview sends to the sign-in page.
	do(chromedp.Navigate(base), chromedp.WaitVisible(chromedp.CSS("#signin")))
	loc, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	assert.Equal(t, base+"login", loc)

	// A wrong password is refused.
	do(chromedp.SendKeys(chromedp.CSS("#user"), "john@doe-family.com"), chromedp.SendKeys(chromedp.CSS("#password"), "wrong"))
	assert.Equal(t, int64(401), submit("#signin"))
	do(chromedp.WaitVisible(chromedp.CSS("#login-error")))
	assert.Contains(t, text("#login-error"), "Wrong user or password")
	shot("login")

	// Signed in: the overview.
	do(chromedp.SendKeys(chromedp.CSS("#user"), "john@doe-family.com"), chromedp.SendKeys(chromedp.CSS("#password"), password))
	assert.Equal(t, int64(200), submit("#signin"))
	do(chromedp.WaitVisible(chromedp.CSS("#chart")))
	var points []int
	eval(`Array.from(document.querySelectorAll("svg#chart polyline")).map(p => p.points.numberOfItems)`, &points)
	assert.Equal(t, []int{144, 144, 144, 144, 144, 144}, points, "six series, a point per 10 minutes of 24 hours")
	var lastAccepted string
	// The last point, or the one before when the test began in the
	// previous 10 minutes, is above the base line.
	eval(`(() => { const p = document.querySelector('polyline[data-series="accepted"]').points, n = p.numberOfItems;
		return Math.min(p.getItem(n-1).y, p.getItem(n-2).y) < p.getItem(0).y ? "raised" : "flat"; })()`, &lastAccepted)
	assert.Equal(t, "raised", lastAccepted, "the messages just accepted are on the chart")
	overview := text("main")
	assert.Contains(t, overview, "accepted 5")
	assert.Contains(t, overview, "quarantined 3")
	assert.Contains(t, overview, "relay")     // the top refusing rule
	assert.Contains(t, overview, "127.0.0.1") // the top sending client
	shot("overview")

	// The quarantine: the EICAR messages, the hostile subject as text.
	assert.Equal(t, int64(200), submit(`a[href="/quarantine"]`))
	do(chromedp.WaitVisible(chromedp.CSS("table.msgs")))
	var rows, scripts int
	eval(`document.querySelectorAll("table.msgs tbody tr").length`, &rows)
	assert.Equal(t, 3, rows)
	eval(`document.querySelectorAll("script").length`, &scripts)
	assert.Zero(t, scripts, "no script element: the subject is text")
	var subjects string
	eval(`Array.from(document.querySelectorAll("a.subject")).map(a => a.textContent).join("|")`, &subjects)
	assert.Contains(t, subjects, hostile)
	list := text("table.msgs")
	assert.Contains(t, list, "antivirus")
	assert.Contains(t, list, "X-Virus-Infected: Virus Detected!")
	shot("quarantine")

	// The hostile one's page: header and body as text.
	idOf := func(subject string) string {
		var id string
		eval(fmt.Sprintf(`(() => { const a = Array.from(document.querySelectorAll("a.subject")).find(a => a.textContent === %q); return a ? a.getAttribute("href").split("/").pop() : ""; })()`, subject), &id)
		require.NotEmpty(t, id, subject)
		return id
	}
	hostileID, releaseID, deleteID := idOf(hostile), idOf("virus to release"), idOf("virus to delete")
	do(chromedp.Navigate(base+"message/"+hostileID), chromedp.WaitVisible(chromedp.CSS("#body")))
	assert.Equal(t, hostile, text("#subject"))
	assert.Contains(t, text("#header"), "Subject: "+hostile)
	assert.Contains(t, text("#body"), "Please open the attachment.")
	assert.Contains(t, text("ul.parts"), "eicar.com")
	assert.Contains(t, text("#quarantine-rule"), "antivirus at smtp")
	assert.Contains(t, text("#quarantine-rule"), "X-Virus-Infected: Virus Detected!")
	eval(`document.querySelectorAll("script").length`, &scripts)
	assert.Zero(t, scripts)
	shot("message")

	// A form posted without its CSRF token is refused, and changes nothing.
	var removed int
	eval(`(() => { const i = document.querySelector('form.actions input[name="csrf"]'); i.remove(); return 1; })()`, &removed)
	assert.Equal(t, int64(403), submit("#delete"))
	var body string
	eval(`document.body.innerText`, &body)
	assert.Contains(t, body, "Forbidden")
	assert.Len(t, quarantined(), 3, "nothing deleted without the token")

	// Release one from its page: it lands in jane's Maildir.
	do(chromedp.Navigate(base+"message/"+releaseID), chromedp.WaitVisible(chromedp.CSS("#release")))
	assert.Equal(t, int64(200), submit("#release"))
	do(chromedp.WaitVisible(chromedp.CSS("#flash")))
	assert.Contains(t, text("#flash"), "1 message(s) released.")
	files := waitFiles(t, filepath.Join(e.maildir, "jane", "new"), 2)
	assert.Contains(t, strings.Join(files, "\n"), "Subject: virus to release")

	// Delete one, selected in the list.
	do(chromedp.Navigate(base+"quarantine?q=virus_q"), chromedp.WaitVisible(chromedp.CSS("table.msgs")),
		chromedp.Click(chromedp.CSS(`input[type="checkbox"][value="`+deleteID+`"]`)))
	assert.Equal(t, int64(200), submit("#delete-selected"))
	do(chromedp.WaitVisible(chromedp.CSS("#flash")))
	assert.Contains(t, text("#flash"), "1 message(s) deleted.")
	left := quarantined()
	require.Len(t, left, 1)
	assert.Contains(t, left[0], hostileID)

	// The queue: the deferred message with its last error.
	do(chromedp.Navigate(base+"queue"), chromedp.WaitVisible(chromedp.CSS("table.msgs")))
	q := text("table.msgs")
	assert.Contains(t, q, "friend@example.net")
	assert.Contains(t, q, "451 4.3.0 try later")
	shot("queue")

	// The log: the refusal, the results; filtered by address.
	do(chromedp.Navigate(base+"log"), chromedp.WaitVisible(chromedp.CSS("table.log")))
	lg := text("table.log")
	assert.Contains(t, lg, "victim@other.test")
	assert.Contains(t, lg, "quarantine/virus_q")
	assert.Contains(t, lg, "delivered")
	shot("log")
	do(chromedp.SendKeys(chromedp.CSS(`input[name="address"]`), "victim@"))
	assert.Equal(t, int64(200), submit(`form.filter button`))
	do(chromedp.WaitVisible(chromedp.CSS(`input[name="address"][value="victim@"]`)))
	lg = text("table.log")
	assert.Contains(t, lg, "victim@other.test")
	assert.NotContains(t, lg, "jane@doe-family.com")

	// On a phone's screen.
	do(chromedp.EmulateViewport(390, 844), chromedp.Navigate(base+"quarantine?q=virus_q"), chromedp.WaitVisible(chromedp.CSS("table.msgs")))
	shot("phone-quarantine")
}

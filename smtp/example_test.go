package smtp_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/smtp"
)

// printQueue stands in for the queue package: it prints what it gets.
type printQueue struct{}

func (printQueue) Enqueue(_ context.Context, tx *policy.Transaction, m *policy.Message) error {
	fmt.Println("queued from", tx.From.Path(), "to", len(tx.Rcpts), "recipient(s), subject:", m.Header.Get("Subject"))
	return nil
}

// Example runs an MTA listener on loopback that accepts mail for one
// domain, and sends it a message.
func Example() {
	chain := policy.NewChain()
	chain.Rcpt("local-domain", func(_ context.Context, _ *policy.Transaction, r policy.Recipient) policy.Verdict {
		if r.Addr.Domain == "example.org" {
			return policy.Accept()
		}
		return policy.Next() // the default denies: no open relay
	})
	srv, err := smtp.NewServer(smtp.Config{
		Hostname: "mx.example.org",
		Chain:    chain,
		Queue:    printQueue{},
		Limits:   smtp.Limits{MaxMessageBytes: 10 << 20},
		SpoolDir: os.TempDir(),
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(context.Background(), l, smtp.Listener{Name: "mta", Role: smtp.RoleMTA})

	c, err := gosmtp.Dial(l.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	c.Hello("client.example.net")
	c.Mail("alice@example.net", nil)
	fmt.Println("rcpt elsewhere:", c.Rcpt("carol@example.com", nil))
	c.Rcpt("bob@example.org", nil)
	w, _ := c.Data()
	io.Copy(w, strings.NewReader("Subject: hello\r\n\r\nHi Bob.\r\n"))
	fmt.Println("send error:", w.Close())
	c.Quit()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fmt.Println("shutdown error:", srv.Shutdown(ctx))
	// Output:
	// rcpt elsewhere: SMTP error 554: Relay access denied
	// queued from <alice@example.net> to 1 recipient(s), subject: hello
	// send error: <nil>
	// shutdown error: <nil>
}

type staticAuth map[string]string

func (a staticAuth) Authenticate(_ context.Context, _ netip.Addr, user, pass string) error {
	if p, ok := a[user]; ok && p == pass {
		return nil
	}
	return auth.ErrInvalidCredentials // 535; any other error is a 454
}

// ExampleNewServer configures the three usual listeners: port 25 for other
// servers, 587 and 465 for the users' mail clients, with a certificate that
// is reloaded when renewed.
func ExampleNewServer() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	// On a first start this creates a self-signed pair; replace the files
	// with real ones and CertReloader picks them up without a restart.
	if _, err := smtp.SelfSignedCertificate(dir+"/cert.pem", dir+"/key.pem", []string{"mail.example.org"}); err != nil {
		log.Fatal(err)
	}
	certs, err := smtp.NewCertReloader(dir+"/cert.pem", dir+"/key.pem")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := smtp.NewServer(smtp.Config{
		Hostname:      "mail.example.org",
		Logger:        slog.New(slog.DiscardHandler),
		Chain:         policy.NewChain(),
		Queue:         printQueue{},
		Authenticator: staticAuth{"alice": "secret"},
		TLSConfig:     &tls.Config{GetCertificate: certs.GetCertificate},
		Listeners: []smtp.Listener{
			{Name: "mta", Addr: ":25", Role: smtp.RoleMTA},
			{Name: "submission", Addr: ":587", Role: smtp.RoleSubmission},
			{Name: "submissions", Addr: ":465", Role: smtp.RoleImplicitTLS},
		},
	})
	fmt.Println(err, srv.Hostname())
	// srv.ListenAndServe(ctx) would now serve the three ports.
	// Output: <nil> mail.example.org
}

// Command noop is an SMTP server that accepts every message and discards
// it: the ceiling of any server built on go-smtp, the baseline that
// compare.sh measures mtakit against.
package main

import (
	"flag"
	"io"
	"log"

	"github.com/emersion/go-smtp"
)

type backend struct{}

func (backend) NewSession(*smtp.Conn) (smtp.Session, error) { return session{}, nil }

type session struct{}

func (session) Mail(string, *smtp.MailOptions) error { return nil }
func (session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (session) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}
func (session) Reset()        {}
func (session) Logout() error { return nil }

func main() {
	addr := flag.String("listen", "127.0.0.1:2600", "listen address")
	flag.Parse()
	s := smtp.NewServer(backend{})
	s.Addr = *addr
	s.Domain = "noop.localhost"
	s.MaxMessageBytes = 64 << 20
	log.Printf("noop SMTP server on %s", *addr)
	log.Fatal(s.ListenAndServe())
}

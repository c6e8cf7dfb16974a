package relay_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
)

// testCert is a self-signed certificate for the receivers, valid for
// mx.tls.test and 127.0.0.1, and a pool that trusts it.
type testCert struct {
	cert tls.Certificate
	pool *x509.CertPool
}

var (
	certOnce sync.Once
	certVal  testCert
)

func selfSigned(t testing.TB) testCert {
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "mx.tls.test"},
			DNSNames:              []string{"mx.tls.test"},
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		pool := x509.NewCertPool()
		pool.AddCert(leaf)
		certVal = testCert{cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool: pool}
	})
	return certVal
}

// received is one message as the receiver saw it.
type received struct {
	Helo     string
	TLS      bool
	AuthUser string
	From     string
	MailOpts smtp.MailOptions
	Rcpts    []string
	RcptOpts []smtp.RcptOptions
	Data     []byte
}

type receiverOpts struct {
	TLS      bool // offer STARTTLS
	Implicit bool // TLS from the first byte
	LMTP     bool
	Unix     string // listen on this unix socket instead of TCP
	DSN      bool
	MaxBytes int64
	Users    map[string]string // AUTH PLAIN accounts
	Insecure bool              // allow AUTH without TLS
}

// receiver is a go-smtp server on loopback that records what it receives
// and answers recipients as scripted.
type receiver struct {
	Addr string
	Port int

	mu        sync.Mutex
	msgs      []received
	sessions  int
	rcptReply func(rcpt string) error // at RCPT; nil accepts
	dataReply func(rcpt string) error // LMTP: per recipient after DATA
}

func startReceiver(t testing.TB, o receiverOpts) *receiver {
	t.Helper()
	r, stop, err := newReceiver(o)
	require.NoError(t, err)
	t.Cleanup(stop)
	return r
}

// newReceiver starts a receiver; stop shuts it down.
func newReceiver(o receiverOpts) (r *receiver, stop func(), err error) {
	r = &receiver{}
	var l net.Listener
	if o.Unix != "" {
		l, err = net.Listen("unix", o.Unix)
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return nil, nil, err
	}
	r.Addr = l.Addr().String()
	if o.Unix == "" {
		_, p, _ := net.SplitHostPort(r.Addr)
		r.Port, _ = strconv.Atoi(p)
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		_, isTLS := c.TLSConnectionState()
		r.mu.Lock()
		r.sessions++
		r.mu.Unlock()
		return &recvSession{r: r, users: o.Users, cur: received{Helo: c.Hostname(), TLS: isTLS}}, nil
	}))
	srv.Domain = "mx.tls.test"
	srv.LMTP = o.LMTP
	srv.EnableDSN = o.DSN
	srv.EnableSMTPUTF8 = true
	srv.MaxMessageBytes = o.MaxBytes
	srv.AllowInsecureAuth = o.Insecure
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	cfg := &tls.Config{Certificates: []tls.Certificate{selfSigned(nil).cert}}
	if o.TLS {
		srv.TLSConfig = cfg
	}
	if o.Implicit {
		l = tls.NewListener(l, cfg)
	}
	go srv.Serve(l)
	return r, func() { srv.Close() }, nil
}

func (r *receiver) messages() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.msgs...)
}

func (r *receiver) sessionCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions
}

type recvSession struct {
	r     *receiver
	users map[string]string
	cur   received
}

func (s *recvSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *recvSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if p, ok := s.users[user]; !ok || p != pass {
			return smtp.ErrAuthFailed
		}
		s.cur.AuthUser = user
		return nil
	}), nil
}

func (s *recvSession) Mail(from string, opts *smtp.MailOptions) error {
	s.cur.From = from
	if opts != nil {
		s.cur.MailOpts = *opts
	}
	return nil
}

func (s *recvSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.r.mu.Lock()
	fn := s.r.rcptReply
	s.r.mu.Unlock()
	if fn != nil {
		if err := fn(to); err != nil {
			return err
		}
	}
	s.cur.Rcpts = append(s.cur.Rcpts, to)
	if opts != nil {
		s.cur.RcptOpts = append(s.cur.RcptOpts, *opts)
	} else {
		s.cur.RcptOpts = append(s.cur.RcptOpts, smtp.RcptOptions{})
	}
	return nil
}

func (s *recvSession) Data(rd io.Reader) error {
	b, err := io.ReadAll(rd)
	if err != nil {
		return err
	}
	m := s.cur
	m.Data = b
	s.r.mu.Lock()
	s.r.msgs = append(s.r.msgs, m)
	s.r.mu.Unlock()
	return nil
}

func (s *recvSession) LMTPData(rd io.Reader, status smtp.StatusCollector) error {
	if err := s.Data(rd); err != nil {
		return err
	}
	s.r.mu.Lock()
	fn := s.r.dataReply
	s.r.mu.Unlock()
	for _, rc := range s.cur.Rcpts {
		var err error
		if fn != nil {
			err = fn(rc)
		}
		status.SetStatus(rc, err)
	}
	return nil
}

func (s *recvSession) Reset() {
	s.cur = received{Helo: s.cur.Helo, TLS: s.cur.TLS, AuthUser: s.cur.AuthUser}
}

func (s *recvSession) Logout() error { return nil }

// delivery builds a Delivery of body from sender to rcpts.
func delivery(t testing.TB, body string, from string, rcpts ...string) *policy.Delivery {
	t.Helper()
	m, err := policy.NewMessage(bytes.NewReader([]byte(body)), int64(len(body)), nil)
	require.NoError(t, err)
	tx := policy.NewTransaction(nil, "q1")
	tx.From = policy.MustParseAddress(from)
	d := &policy.Delivery{Tx: tx, Message: m}
	for _, r := range rcpts {
		d.Rcpts = append(d.Rcpts, policy.Recipient{Addr: policy.MustParseAddress(r)})
	}
	return d
}

func codes(rs []policy.Reply) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = strconv.Itoa(r.Code) + " " + r.Enhanced
	}
	return out
}

// testCtx bounds a delivery in a test.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// smtpError builds a scripted reply.
func smtpError(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

func exampleTLS() *tls.Config { return &tls.Config{RootCAs: selfSigned(nil).pool} }

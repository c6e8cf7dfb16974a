package main

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/delegate/milter"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/smtp"
)

// Start-up checks: a mistake in the command line fails at start, with a
// message naming the flag, rather than at the first delivery (a bad
// -relayhost) or silently (a -tls-cert that does not exist replaced by a
// self-signed certificate).

// checkFlags checks the command line as given, before parseFlags fills in
// defaults. rest is what follows the flags: nothing, or the queue command.
func checkFlags(c *config, rest []string) error {
	if len(rest) > 0 && rest[0] == "queue" {
		return errors.New(`the queue command comes first: "doe-family queue [flags] list|show|..."`)
	}
	if len(rest) > 0 {
		return fmt.Errorf("unexpected argument %q: doe-family takes only flags (each -name value), or the queue command", rest[0])
	}
	if c.relayhost != "" {
		if err := checkHostPort(c.relayhost); err != nil {
			return fmt.Errorf("-relayhost: %q: %w", c.relayhost, err)
		}
	}
	for _, d := range c.domains {
		n, err := policy.NormalizeDomain(d)
		if err == nil && strings.HasPrefix(n, "[") {
			err = errors.New("an address literal, not a name")
		}
		if err != nil {
			return fmt.Errorf("-domain: %q is not a domain name: %w", d, err)
		}
	}
	if err := checkSelector(c.dkimSelector); err != nil {
		return fmt.Errorf("-dkim-selector: %q: %w", c.dkimSelector, err)
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return errors.New("-tls-cert and -tls-key: give both, or neither for a self-signed certificate")
	}
	for _, f := range []struct{ flag, path string }{{"-tls-cert", c.tlsCert}, {"-tls-key", c.tlsKey}, {"-dkim-key", c.dkimKey}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	if _, err := parseMilters(c.milters); err != nil {
		return fmt.Errorf("-milter: %w", err)
	}
	if _, err := milter.ParseDefaultAction(c.milterDefault); err != nil {
		return fmt.Errorf("-milter-default-action: %w", err)
	}
	switch c.dkimGenKeyType {
	case "ed25519", "rsa":
	default:
		return fmt.Errorf("-dkim-genkey-type: want ed25519 or rsa, not %q", c.dkimGenKeyType)
	}
	if c.queue != "" && c.natsEmbedded != "" {
		return errors.New("-queue and -nats-embedded: give one (a cluster, or a server in this process)")
	}
	if c.queue != "" && c.queue != queueJournal {
		if _, err := natsURLs(c.queue); err != nil {
			return err
		}
	}
	if c.journalSegment != 0 && c.queue != queueJournal {
		return errors.New("-journal-segment-size: only with -queue journal")
	}
	if c.journalSegment != 0 && c.journalSegment < 64<<10 {
		return fmt.Errorf("-journal-segment-size: %d: want 0 (64 MiB) or at least 65536", c.journalSegment)
	}
	if c.queueTimeout <= 0 {
		return fmt.Errorf("-queue-timeout: %v: want a positive duration", c.queueTimeout)
	}
	if c.natsReplicas < 0 || c.natsReplicas > 5 {
		return fmt.Errorf("-nats-replicas: %d: want 1 to 5 (JetStream's limit)", c.natsReplicas)
	}
	if (c.queue != "" && c.queue != queueJournal || c.natsEmbedded != "") && c.node == "" {
		return errors.New("-node: a name is needed with -queue or -nats-embedded")
	}
	return checkConsoleFlags(c)
}

// checkHostPort checks a host:port with a host name or an IP address and
// a port number from 1 to 65535.
func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want host:port")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("bad port %q (want 1 to 65535)", port)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if n, err := policy.NormalizeDomain(host); err != nil || strings.HasPrefix(n, "[") {
		return fmt.Errorf("bad host %q", host)
	}
	return nil
}

// checkSelector checks a DKIM selector: one or more DNS labels separated
// by dots (RFC 6376 section 3.1).
func checkSelector(sel string) error {
	if sel == "" {
		return errors.New("empty")
	}
	for _, label := range strings.Split(sel, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("bad label %q", label)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("bad character %q (letters, digits, - and _ only)", c)
			}
		}
	}
	return nil
}

// loadCertificate loads the TLS certificate: the pair of -tls-cert and
// -tls-key, or without them the self-signed one kept under -data (made
// the first time, and logged where).
func (s *server) loadCertificate() (*smtp.CertReloader, error) {
	cfg := s.cfg
	if !cfg.selfSigned {
		r, err := smtp.NewCertReloader(cfg.tlsCert, cfg.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("-tls-cert/-tls-key: %w", err)
		}
		return r, nil
	}
	_, statErr := os.Stat(cfg.tlsCert)
	if _, err := smtp.SelfSignedCertificate(cfg.tlsCert, cfg.tlsKey, []string{cfg.hostname, "localhost", "127.0.0.1"}); err != nil {
		return nil, fmt.Errorf("self-signed TLS certificate (no -tls-cert): %w", err)
	}
	r, err := smtp.NewCertReloader(cfg.tlsCert, cfg.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("self-signed TLS certificate (no -tls-cert): %w", err)
	}
	what := "using the self-signed TLS certificate made before (no -tls-cert)"
	if errors.Is(statErr, fs.ErrNotExist) {
		what = "made a self-signed TLS certificate (no -tls-cert)"
	}
	s.log.Info(what, slog.String("cert", cfg.tlsCert), slog.String("key", cfg.tlsKey), slog.String("certificate", describeCert(r)))
	return r, nil
}

// announce says the server is ready, on stdout for people and tests and
// in the log, with the DKIM record to publish when it signs.
func (s *server) announce(stdout io.Writer) {
	if s.dkim != nil {
		sg := s.dkim.signer()
		fmt.Fprintf(stdout, "DKIM: publish %s TXT %s\n", sg.DNSName(), txtStrings(sg.DNSRecord()))
		s.log.Info("DKIM signing", slog.String("domain", sg.Domain), slog.String("selector", sg.Selector),
			slog.String("publish", sg.DNSName()), slog.String("record", sg.DNSRecord()))
	}
	fmt.Fprintf(stdout, "doe-family ready: domains %v, spool %s, maildir %s\n", s.cfg.domains, s.cfg.spool, s.cfg.maildir)
	s.log.Info("doe-family ready", slog.String("domains", strings.Join(s.cfg.domains, ",")),
		slog.String("spool", s.cfg.spool), slog.String("maildir", s.cfg.maildir),
		slog.String("certificate", describeCert(s.cert.Load())))
}

// genDKIMKey writes a new DKIM key to -dkim-genkey (mode 0600, never over
// an existing file) and prints the TXT record to publish for it.
func genDKIMKey(cfg *config, stdout io.Writer) error {
	var key crypto.Signer
	var err error
	switch cfg.dkimGenKeyType {
	case "ed25519":
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		key, err = rsa.GenerateKey(rand.Reader, auth.MinRSAKeyBits)
	}
	if err != nil {
		return fmt.Errorf("-dkim-genkey: %w", err)
	}
	if len(cfg.domains) == 0 {
		return errors.New("-domain: a domain is needed to name the key's record")
	}
	signer, err := auth.NewDKIMSigner(cfg.domains[0], cfg.dkimSelector, key)
	if err != nil {
		return fmt.Errorf("-dkim-genkey: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("-dkim-genkey: %w", err)
	}
	f, err := os.OpenFile(cfg.dkimGenKey, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("-dkim-genkey: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		os.Remove(cfg.dkimGenKey)
		return fmt.Errorf("-dkim-genkey: %w", err)
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		os.Remove(cfg.dkimGenKey)
		return fmt.Errorf("-dkim-genkey: %w", err)
	}
	fmt.Fprintf(stdout, "wrote a new %s DKIM key to %s; use it with -dkim-key %s -dkim-selector %s\n",
		cfg.dkimGenKeyType, cfg.dkimGenKey, cfg.dkimGenKey, cfg.dkimSelector)
	fmt.Fprintf(stdout, "publish %s TXT %s\n", signer.DNSName(), txtStrings(signer.DNSRecord()))
	return nil
}

// txtStrings quotes a TXT record's value as a zone file wants it: in
// strings of at most 255 bytes (an RSA key's record is longer).
func txtStrings(v string) string {
	var parts []string
	for len(v) > 255 {
		parts = append(parts, strconv.Quote(v[:255]))
		v = v[255:]
	}
	return strings.Join(append(parts, strconv.Quote(v)), " ")
}

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/smtp"
)

// SIGHUP reloads what doe-family reads from files: the credentials
// (-users), the recipient and alias tables (-users, -aliases), the TLS
// certificate (-tls-cert, -tls-key) and the DKIM key (-dkim-key). Each
// is loaded anew and swapped in atomically, so a session sees the old one
// or the new one, never a mix, and none is dropped; a file that does not
// load keeps the one in force and its error is logged. One INFO line
// "reloaded" says what changed.
//
// SIGTERM and SIGINT stop the server gracefully (main.go); SIGHUP no
// longer kills it.

// reloadState is what the last load of each file gave, to say what a
// reload changed.
type reloadState struct {
	mu       sync.Mutex // serializes reloads
	digests  map[string][32]byte
	users    int
	certDesc string
}

// watchSignals reloads on SIGHUP until ctx ends.
func (s *server) watchSignals(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				s.log.Info("SIGHUP: reloading -users, -aliases, the TLS certificate and the DKIM key")
				s.reload()
			}
		}
	}()
}

// digest returns the SHA-256 of a file's contents, or the zero digest when
// it cannot be read.
func digest(path string) [32]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(b)
}

// remember records the state reload compares with; build calls it once
// everything is loaded.
func (s *server) remember() {
	st := &s.reloaded
	st.digests = map[string][32]byte{}
	for _, p := range []string{s.cfg.users, s.cfg.aliases} {
		if p != "" {
			st.digests[p] = digest(p)
		}
	}
	if s.creds != nil {
		st.users = s.creds.Len()
	}
	st.certDesc = describeCert(s.cert.Load())
}

// changed reports whether the file at path differs from the last load,
// and records its new digest.
func (st *reloadState) changed(path string) bool {
	d := digest(path)
	old := st.digests[path]
	st.digests[path] = d
	return d != old
}

// reload loads every file again; see the comment at the top.
func (s *server) reload() {
	st := &s.reloaded
	st.mu.Lock()
	defer st.mu.Unlock()
	var changes []any
	failed := 0
	fail := func(what string, err error) {
		failed++
		s.log.Error("reload failed, keeping the previous "+what, slog.String("error", err.Error()))
	}

	usersChanged, aliasesChanged := false, false
	if s.cfg.users != "" {
		usersChanged = st.changed(s.cfg.users)
	}
	if s.cfg.aliases != "" {
		aliasesChanged = st.changed(s.cfg.aliases)
	}
	if s.creds != nil {
		if err := s.creds.Reload(); err != nil {
			fail("users (-users)", err)
			delete(st.digests, s.cfg.users) // a fixed file counts as changed
			changes = append(changes, slog.String("users", "error, kept"))
		} else {
			n := s.creds.Len()
			if usersChanged {
				changes = append(changes, slog.String("users", fmt.Sprintf("%d → %d", st.users, n)))
			} else {
				changes = append(changes, slog.String("users", fmt.Sprintf("unchanged (%d)", n)))
			}
			st.users = n
		}
	}
	if s.rcpts != nil {
		if err := s.rcpts.Reload(); err != nil {
			fail("recipient table (-users, -aliases)", err)
			delete(st.digests, s.cfg.aliases)
			changes = append(changes, slog.String("aliases", "error, kept"))
		} else if s.cfg.aliases != "" {
			changes = append(changes, slog.String("aliases", changedWord(aliasesChanged)))
		}
	}

	if r, err := smtp.NewCertReloader(s.cfg.tlsCert, s.cfg.tlsKey); err != nil {
		fail("TLS certificate (-tls-cert, -tls-key)", err)
		changes = append(changes, slog.String("certificate", "error, kept"))
	} else {
		s.cert.Store(r)
		desc := describeCert(r)
		if desc == st.certDesc {
			changes = append(changes, slog.String("certificate", "unchanged ("+desc+")"))
		} else {
			changes = append(changes, slog.String("certificate", st.certDesc+" → "+desc))
		}
		st.certDesc = desc
	}

	if s.dkim != nil {
		old := s.dkim.signer()
		if signer, err := s.dkim.load(); err != nil {
			fail("DKIM key (-dkim-key)", err)
			changes = append(changes, slog.String("dkim", "error, kept"))
		} else if sameKey(old, signer) {
			changes = append(changes, slog.String("dkim", "unchanged (selector "+signer.Selector+")"))
		} else {
			changes = append(changes, slog.String("dkim", "new key, selector "+signer.Selector),
				slog.String("dkim_record", signer.DNSName()+" TXT "+signer.DNSRecord()))
		}
	}
	changes = append(changes, slog.Int("errors", failed))
	if failed > 0 {
		s.log.Warn("reloaded, with errors", changes...)
	} else {
		s.log.Info("reloaded", changes...)
	}
}

func changedWord(changed bool) string {
	if changed {
		return "changed"
	}
	return "unchanged"
}

// describeCert names a certificate for the logs: its serial and notAfter.
func describeCert(r *smtp.CertReloader) string {
	if r == nil {
		return "none"
	}
	c, err := r.GetCertificate(nil)
	if err != nil || c == nil || len(c.Certificate) == 0 {
		return "none"
	}
	leaf := c.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return "unparsable"
		}
	}
	return fmt.Sprintf("serial %X, notAfter %s", leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.RFC3339))
}

// certificate is tls.Config.GetCertificate over the reloader in force.
// The reloader itself picks up a renewed pair when the files change;
// SIGHUP makes a new one, so a reload is also forced.
func (s *server) certificate(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert.Load().GetCertificate(h)
}

// dkimKey is the DKIM signing rule of doe-family with a key SIGHUP can
// replace: the rule in force is swapped atomically, so a message is
// signed with the old key or the new one.
type dkimKey struct {
	path, domain, selector string
	verify                 auth.DKIMVerifyOptions
	domains                []string
	cur                    atomic.Pointer[dkimSigning]
}

type dkimSigning struct {
	signer *auth.DKIMSigner
	rule   policy.MessageRule
}

// newDKIMKey loads the key of -dkim-key for the first -domain.
func newDKIMKey(cfg *config) (*dkimKey, error) {
	k := &dkimKey{path: cfg.dkimKey, domain: cfg.domains[0], selector: cfg.dkimSelector}
	if _, err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

// load reads the key file again and puts a signer for it in force.
func (k *dkimKey) load() (*auth.DKIMSigner, error) {
	key, err := auth.LoadDKIMKey(k.path)
	if err != nil {
		return nil, err
	}
	signer, err := auth.NewDKIMSigner(k.domain, k.selector, key)
	if err != nil {
		return nil, err
	}
	k.use(signer)
	return signer, nil
}

// use puts signer in force.
func (k *dkimKey) use(signer *auth.DKIMSigner) {
	k.cur.Store(&dkimSigning{signer: signer, rule: auth.SignOrVerifyDKIM(signer, k.verify, k.domains...)})
}

// signer returns the signer in force.
func (k *dkimKey) signer() *auth.DKIMSigner { return k.cur.Load().signer }

// rule returns the postq rule that signs mail of local senders with the
// key in force and verifies the rest (auth.SignOrVerifyDKIM).
func (k *dkimKey) rule(verify auth.DKIMVerifyOptions, domains []string) policy.MessageRule {
	k.verify, k.domains = verify, domains
	k.use(k.signer()) // the key loaded before, with verify and domains
	return func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		return k.cur.Load().rule(ctx, tx, m)
	}
}

func sameKey(a, b *auth.DKIMSigner) bool {
	if a == nil || b == nil {
		return a == b
	}
	pa, err1 := x509.MarshalPKIXPublicKey(a.Key.Public())
	pb, err2 := x509.MarshalPKIXPublicKey(b.Key.Public())
	return err1 == nil && err2 == nil && bytes.Equal(pa, pb)
}

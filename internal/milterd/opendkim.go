package milterd

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtakit/mtakit/internal/dnstest"
)

// OpenDKIMConfig configures [OpenDKIM].
type OpenDKIMConfig struct {
	// Mode is opendkim's Mode: "s" signs, "v" verifies, "sv" (the
	// default) signs mail from internal hosts and verifies the rest.
	Mode string
	// Domain, Selector and Key are the signing key (Domain, Selector,
	// KeyFile in opendkim's configuration): mail whose From domain is
	// Domain (or below it, SubDomains yes) is signed. Key is an RSA or
	// Ed25519 private key; nil means no signing (Mode must then be "v").
	Domain, Selector string
	Key              crypto.Signer
	// DNS is the "127.0.0.1:port" of the DNS server opendkim asks for
	// keys, through libunbound forwarding to it (ResolverConfiguration).
	// Empty: a loopback server without records is started.
	DNS string
	// InternalHosts are the clients whose mail is signed rather than
	// verified; empty means opendkim's default, 127.0.0.1. Mail of an
	// authenticated client ({auth_authen} set) is signed too.
	InternalHosts []string
	// AuthservID is the authserv-id of the Authentication-Results field
	// opendkim adds when verifying. Empty: "opendkim.test".
	AuthservID string
	// Extra is appended to the configuration file (one option a line).
	Extra string
}

// opendkimConf is the configuration. Canonicalization relaxed/relaxed
// (opendkim's default is simple/simple, which any header rewrapping
// breaks); OversignHeaders From as most set-ups do; Syslog off (no syslog
// in a test), so the only output is start-up errors on stderr.
const opendkimConf = `# Written by internal/milterd for one test.
Mode			{{mode}}
Socket			inet:{{port}}@127.0.0.1
Background		no
Syslog			no
PidFile			{{dir}}/opendkim.pid
TemporaryDirectory	{{dir}}
Canonicalization	relaxed/relaxed
OversignHeaders		From
SubDomains		yes
AlwaysAddARHeader	yes
AuthservID		{{authserv}}
ResolverConfiguration	{{dir}}/unbound.conf
RequireSafeKeys		no
`

// unboundConf sends every query of opendkim's libunbound to the loopback
// DNS server: a forward zone for the root, localhost allowed (unbound
// refuses to query it by default), the iterator only (no DNSSEC
// validation: the test zone is unsigned).
const unboundConf = `# Written by internal/milterd for one test.
server:
	do-not-query-localhost: no
	module-config: "iterator"
	username: ""
	chroot: ""
	directory: "{{dir}}"
	use-syslog: no
	verbosity: 0
forward-zone:
	name: "."
	forward-addr: {{dnsaddr}}
`

// OpenDKIM starts opendkim (Debian package opendkim) as a milter on a free
// port of 127.0.0.1 and stops it at the end of the test. It skips the test
// when opendkim is not installed, unless MTAKIT_INTEGRATION=1.
//
// opendkim resolves through libunbound, and its Nameservers option takes
// addresses without a port; so the configuration gives libunbound a
// configuration file (ResolverConfiguration) whose forward zone names the
// loopback server with its port (127.0.0.1@port). No query leaves the
// machine and the system's resolver is never asked.
func OpenDKIM(tb testing.TB, cfg OpenDKIMConfig) *Daemon {
	tb.Helper()
	bin := requireTool(tb, "opendkim", "opendkim")
	if cfg.Mode == "" {
		cfg.Mode = "sv"
	}
	if cfg.AuthservID == "" {
		cfg.AuthservID = "opendkim.test"
	}
	if strings.Contains(cfg.Mode, "s") && (cfg.Key == nil || cfg.Domain == "" || cfg.Selector == "") {
		tb.Fatal("milterd.OpenDKIM: signing (Mode with s) needs Domain, Selector and Key")
	}
	if cfg.DNS == "" {
		cfg.DNS = dnstest.New(tb).Addr()
	}
	d := start(tb, "opendkim", func() (*Daemon, error) { return startOpenDKIM(tb, bin, cfg) })
	logOnFailure(tb, d)
	return d
}

func startOpenDKIM(tb testing.TB, bin string, cfg OpenDKIMConfig) (*Daemon, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := &Daemon{Name: "opendkim", Network: "tcp", Address: fmt.Sprintf("127.0.0.1:%d", port), Dir: privateDir(tb, "opendkim"), killAtStop: true}
	fail := func(err error) (*Daemon, error) { d.Stop(); return nil, err }

	host, dnsPort, ok := strings.Cut(cfg.DNS, ":")
	if !ok {
		return fail(fmt.Errorf("DNS %q is not host:port", cfg.DNS))
	}
	r := strings.NewReplacer("{{dir}}", d.Dir, "{{port}}", fmt.Sprint(port), "{{mode}}", cfg.Mode,
		"{{authserv}}", cfg.AuthservID, "{{dnsaddr}}", host+"@"+dnsPort)
	conf := r.Replace(opendkimConf)
	if cfg.Key != nil {
		der, err := x509.MarshalPKCS8PrivateKey(cfg.Key)
		if err != nil {
			return fail(err)
		}
		keyFile := filepath.Join(d.Dir, "dkim.key")
		if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return fail(err)
		}
		conf += fmt.Sprintf("Domain\t\t\t%s\nSelector\t\t%s\nKeyFile\t\t\t%s\n", cfg.Domain, cfg.Selector, keyFile)
	}
	if len(cfg.InternalHosts) > 0 {
		hosts := filepath.Join(d.Dir, "internal-hosts")
		if err := os.WriteFile(hosts, []byte(strings.Join(cfg.InternalHosts, "\n")+"\n"), 0o644); err != nil {
			return fail(err)
		}
		conf += "InternalHosts\t\t" + hosts + "\n"
	}
	conf += cfg.Extra + "\n"
	for name, content := range map[string]string{"opendkim.conf": conf, "unbound.conf": r.Replace(unboundConf)} {
		if err := os.WriteFile(filepath.Join(d.Dir, name), []byte(content), 0o644); err != nil {
			return fail(err)
		}
	}
	// -f: foreground (Background no says it too); -x: this file only.
	argv := []string{bin, "-f", "-x", filepath.Join(d.Dir, "opendkim.conf")}
	err = d.start(argv, nil, func(ctx context.Context) error { return waitAccept(ctx, d.Address) })
	if err != nil {
		out := d.out.String()
		if strings.Contains(out, "Address already in use") {
			err = fmt.Errorf("%w: %v", errPortTaken, err)
		}
		d.Stop()
		return nil, fmt.Errorf("%w\n%s", err, tail(out, 30))
	}
	return d, nil
}

package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mtakit/mtakit/smtp"
)

// config is the command line. Its flag names and defaults are a contract:
// tests and users rely on them.
type config struct {
	listen, submission, receiver string
	domains                      []string
	internal                     string
	users                        string
	dkimKey, dkimSelector        string
	clamav                       string
	dns                          string
	spool, maildir               string
	relayhost                    string
	tlsCert, tlsKey              string
	hostname                     string
	dataDir                      string
	logFormat, logLevel          string
	retryMin                     time.Duration
	hashPassword                 string
	unsafeNoSync                 bool
	pprof                        string
	limits                       smtp.Limits
	aliases                      string
	dnsbl, rateLimit             string        // see rules_abuse.go
	greylist                     bool          //
	greylistDelay                time.Duration //
	dkimGenKey, dkimGenKeyType   string        // see startup.go
	selfSigned                   bool          // neither -tls-cert nor -tls-key: the self-signed certificate
	adminSocket, adminAddr       string        // see queuecmd.go
	adminTokenFile               string        //
	metrics                      string        // see metrics.go
	milters, milterDefault       string        // see rules_milter.go
	console                      string        // see console.go
	admins                       []string      //
	queue, natsEmbedded, node    string        // see cluster.go
	natsReplicas                 int           //
	queueTimeout                 time.Duration //
	journalSegment               int64         // -journal-segment-size
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("doe-family", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var domains, admins string
	host, _ := os.Hostname()
	fs.StringVar(&c.listen, "listen", "127.0.0.1:2525", "MTA port, no AUTH needed")
	fs.StringVar(&c.submission, "submission", "127.0.0.1:5587", "submission port: AUTH PLAIN/LOGIN after STARTTLS (needs -users)")
	fs.StringVar(&c.receiver, "receiver", "127.0.0.1:10024", "where delegated messages return (with -clamav)")
	fs.StringVar(&domains, "domain", "doe-family.com", "local domains, comma-separated")
	fs.StringVar(&c.internal, "internal", "192.168.1.0/24", "internal networks that may relay, comma-separated CIDRs")
	fs.StringVar(&c.users, "users", "", "credentials file, lines address:bcrypt-hash")
	fs.StringVar(&c.dkimKey, "dkim-key", "", "PEM key: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8); empty: no signing")
	fs.StringVar(&c.dkimSelector, "dkim-selector", "2022-09", "DKIM selector")
	fs.StringVar(&c.clamav, "clamav", "", "clamsmtpd address; empty: no antivirus")
	fs.StringVar(&c.dns, "dns", "", "DNS server host:port for every lookup (default: the system resolver)")
	fs.StringVar(&c.spool, "spool", "./data/queue", "queue directory")
	fs.StringVar(&c.maildir, "maildir", "./data/mail", "local delivery root")
	fs.StringVar(&c.relayhost, "relayhost", "", "send non-local mail to this host:port instead of MX lookup")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "TLS certificate (default: a self-signed one made at start, kept under ./data)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "TLS key (default: see -tls-cert)")
	fs.StringVar(&c.hostname, "hostname", host, "our name in the greeting, Received and EHLO")
	fs.StringVar(&c.dataDir, "data", "./data", "where the self-signed certificate is kept")
	fs.DurationVar(&c.retryMin, "retry-min", 5*time.Minute, "delay before the first retry of a deferred message (doubles up to 4h)")
	fs.Int64Var(&c.limits.MaxMessageBytes, "max-message-size", 25<<20, "largest message accepted, in bytes")
	fs.IntVar(&c.limits.MaxConnections, "max-connections", 1000, "connections at once, in total")
	fs.IntVar(&c.limits.MaxConnectionsPerIP, "max-connections-per-ip", 20, "connections at once from one client address")
	fs.StringVar(&c.hashPassword, "hash-password", "", "print the bcrypt hash of this password for a -users line, and exit")
	fs.BoolVar(&c.unsafeNoSync, "unsafe-no-fsync", false, "for benchmarks only: do not fsync the queue (a crash loses accepted mail)")
	fs.StringVar(&c.pprof, "pprof", "", "serve net/http/pprof on this loopback host:port, for profiling under load; empty: off")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.aliases, "aliases", "", "alias file, lines alias@domain: target[, target...]; with -users, the only local recipients")
	fs.StringVar(&c.dnsbl, "dnsbl", "", "DNS block lists checked at connect on the MTA port, comma-separated, each zone[=codes][*weight] as Postfix writes them; empty: none")
	fs.StringVar(&c.rateLimit, "rate-limit", defaultRateLimit, "limits per client address or authenticated user, e.g. msgs=200/h,rcpts=1000/h,conns=60/m (periods s, m, h, d); off: none")
	fs.BoolVar(&c.greylist, "greylist", false, "greylist mail from new (client network, sender, recipient) triplets; state kept under -data")
	fs.DurationVar(&c.greylistDelay, "greylist-delay", defaultGreylistDelay, "for tests only: how long -greylist refuses a new triplet")
	fs.StringVar(&c.dkimGenKey, "dkim-genkey", "", "write a new DKIM key to this file (mode 0600), print the TXT record to publish for it (-domain, -dkim-selector), and exit")
	fs.StringVar(&c.dkimGenKeyType, "dkim-genkey-type", "rsa", "the type of the -dkim-genkey key: rsa (2048 bits, verified everywhere) or ed25519")
	fs.StringVar(&c.adminSocket, "admin", "", "queue admin socket, for \"doe-family queue\" (default <-data>/admin.sock; off: none)")
	fs.StringVar(&c.adminAddr, "admin-addr", "", "also serve the queue admin API on this loopback host:port, with the token of -admin-token-file; empty: off")
	fs.StringVar(&c.adminTokenFile, "admin-token-file", "", "file holding the bearer token of -admin-addr")
	fs.StringVar(&c.metrics, "metrics", "", "serve Prometheus metrics on http://host:port/metrics, e.g. 127.0.0.1:9025; empty: off")
	fs.StringVar(&c.milters, "milter", "", "milters, in order, comma-separated, as Postfix's smtpd_milters: inet:127.0.0.1:11332 (rspamd), unix:/path; empty: none")
	fs.StringVar(&c.milterDefault, "milter-default-action", "tempfail", "when a milter is down, slow or broken: tempfail (451, the client retries) or accept (go on without it)")
	fs.StringVar(&c.console, "console", "", "serve the web console on this host:port, e.g. 127.0.0.1:8025 (HTTPS with the server's certificate unless loopback); needs -users and -admins; empty: off")
	fs.StringVar(&admins, "admins", "", "accounts of -users that may sign in to the -console, comma-separated")
	fs.StringVar(&c.queue, "queue", "", "the queue's storage: empty, the filesystem spool in -spool (a file per message); \"journal\", an append-only journal in -spool (segment files, one fdatasync per group of changes); or a NATS JetStream cluster, nats://host:port[,host:port...], shared with the other nodes, with the rate limits, greylisting and AUTH failure counts")
	fs.StringVar(&c.natsEmbedded, "nats-embedded", "", "run a single-node NATS JetStream inside this process with its data in this directory (fsync at every write) and keep the queue there, to try the JetStream queue without a cluster; empty: off")
	fs.StringVar(&c.node, "node", host, "this node's name in a -queue cluster (unique per node)")
	fs.IntVar(&c.natsReplicas, "nats-replicas", 0, "replicas of the -queue streams and buckets (at most the cluster's size); 0: 3 for -queue, 1 for -nats-embedded")
	fs.Int64Var(&c.journalSegment, "journal-segment-size", 0, "with -queue journal: the size of its segment files, in bytes (each is written whole before use; a message over half of it gets a file of its own); 0: 64 MiB, at least 64 KiB")
	fs.DurationVar(&c.queueTimeout, "queue-timeout", 10*time.Second, "with -queue or -nats-embedded: how long a message may wait for the cluster's acknowledgements before the client gets 451 4.3.0 (no quorum); it bounds every change of the queue")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	for _, d := range strings.Split(domains, ",") {
		if d = strings.TrimSpace(d); d != "" {
			c.domains = append(c.domains, d)
		}
	}
	c.admins = splitList(admins)
	if err := checkFlags(c, fs.Args()); err != nil {
		return nil, err
	}
	if c.tlsCert == "" && c.tlsKey == "" {
		c.selfSigned = true
		c.tlsCert = filepath.Join(c.dataDir, "tls", "cert.pem")
		c.tlsKey = filepath.Join(c.dataDir, "tls", "key.pem")
	}
	if c.hostname == "" {
		c.hostname = "localhost"
	}
	return c, nil
}

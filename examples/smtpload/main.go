// Command smtpload sends a bounded load of messages to an SMTP server and
// reports the rate, the latency and the error replies it got.
//
//	go run ./examples/smtpload -addr 127.0.0.1:2525 -c 8 -n 2000 -size 4096
//
// The run stops after -n messages or -duration, whichever comes first.
// Point it only at servers you run or are allowed to load.
package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"
)

func main() {
	var cfg Config
	var to, auth, sources string
	var asJSON, insecure bool
	var dkimKey string
	flag.StringVar(&cfg.Addr, "addr", "127.0.0.1:2525", "server host:port")
	flag.IntVar(&cfg.Conns, "c", 8, "concurrent connections")
	flag.IntVar(&cfg.Count, "n", 1000, "messages to send in all")
	flag.IntVar(&cfg.PerConn, "per-conn", 0, "messages per connection before reconnecting (0: no limit)")
	flag.IntVar(&cfg.Size, "size", 4096, "message size in bytes")
	flag.DurationVar(&cfg.Duration, "duration", time.Minute, "upper bound of the run")
	flag.BoolVar(&cfg.StartTLS, "starttls", false, "use STARTTLS")
	flag.BoolVar(&cfg.ImplicitTLS, "tls", false, "use implicit TLS")
	flag.BoolVar(&insecure, "insecure", true, "do not verify the server certificate")
	flag.StringVar(&auth, "auth", "", "user:password for AUTH PLAIN")
	flag.StringVar(&cfg.Helo, "helo", "smtpload.localhost", "EHLO name")
	flag.StringVar(&cfg.From, "from", "load@example.net", "envelope sender")
	flag.StringVar(&to, "to", "user@doe-family.com", "recipients, comma-separated")
	flag.StringVar(&sources, "source", "", "local IPs to connect from, comma-separated, used in turn (e.g. 127.0.0.2,127.0.0.3 to stay under a per-IP connection limit)")
	flag.BoolVar(&asJSON, "json", false, "print the report as JSON")
	flag.StringVar(&dkimKey, "dkim-key", "", "PEM private key (RSA or Ed25519, PKCS#1 or PKCS#8) to DKIM-sign the message with, as the -from domain; empty: unsigned")
	flag.StringVar(&cfg.DKIMSelector, "dkim-selector", "load", "DKIM selector of -dkim-key")
	flag.Parse()

	cfg.To = strings.Split(to, ",")
	if sources != "" {
		cfg.Sources = strings.Split(sources, ",")
	}
	cfg.TLSConfig = &tls.Config{InsecureSkipVerify: insecure, ServerName: strings.Split(cfg.Addr, ":")[0]}
	if auth != "" {
		u, p, ok := strings.Cut(auth, ":")
		if !ok {
			fmt.Fprintln(os.Stderr, "smtpload: -auth wants user:password")
			os.Exit(2)
		}
		cfg.AuthUser, cfg.AuthPass = u, p
	}
	if dkimKey != "" {
		signer, err := loadKey(dkimKey)
		if err != nil {
			fmt.Fprintln(os.Stderr, "smtpload: -dkim-key:", err)
			os.Exit(2)
		}
		cfg.DKIMSigner = signer
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if asJSON {
		json.NewEncoder(os.Stdout).Encode(rep)
	} else {
		fmt.Print(rep)
	}
	if rep.Sent == 0 {
		os.Exit(1)
	}
}

// loadKey reads a PEM private key: PKCS#8 (RSA or Ed25519) or PKCS#1 RSA.
func loadKey(file string) (crypto.Signer, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T cannot sign", k)
	}
	return s, nil
}

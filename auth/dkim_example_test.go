package auth_test

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
)

const exampleRaw = "From: Alice <alice@example.com>\r\n" +
	"To: bob@example.org\r\n" +
	"Subject: Hello\r\n" +
	"Date: Mon, 2 Jun 2025 10:00:00 +0000\r\n" +
	"Message-ID: <1@example.com>\r\n" +
	"\r\n" +
	"Hi Bob!\r\n"

// exampleKeyFile writes an Ed25519 key in PKCS#8 PEM, as
// "openssl genpkey -algorithm ed25519" makes it.
func exampleKeyFile(dir string) string {
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	path := filepath.Join(dir, "dkim.pem")
	os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	return path
}

func exampleMessage(raw string) *policy.Message {
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	if err != nil {
		panic(err)
	}
	return m
}

// Sign the mail of local users at postq.
func ExampleSignDKIM() {
	dir, _ := os.MkdirTemp("", "dkim")
	defer os.RemoveAll(dir)

	key, err := auth.LoadDKIMKey(exampleKeyFile(dir))
	if err != nil {
		panic(err)
	}
	signer, err := auth.NewDKIMSigner("example.com", "2025", key)
	if err != nil {
		panic(err)
	}
	// Publish this record in DNS:
	fmt.Println(signer.DNSName())

	chain := policy.NewChain()
	chain.PostQ("dkim-sign", auth.SignDKIM(signer, "example.com"))

	tx := policy.NewTransaction(&policy.Conn{ID: "c1", AuthUser: "alice@example.com"}, "q1")
	tx.From = policy.MustParseAddress("alice@example.com")
	m := exampleMessage(exampleRaw)
	chain.EvalPostQ(context.Background(), tx, m)

	tags, _ := auth.ParseDKIMTags(m.Header.Get("DKIM-Signature"))
	fmt.Println(tags["d"], tags["s"], tags["a"], tags["c"])
	// Output:
	// 2025._domainkey.example.com
	// example.com 2025 ed25519-sha256 relaxed/relaxed
}

// Verify incoming signatures at preq and record the results.
func ExampleVerifyDKIM() {
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	signer, _ := auth.NewDKIMSigner("example.com", "2025", key)

	// A fake DNS stands in for the Internet's.
	dns := &policytest.Resolver{
		TXT: map[string][]string{signer.DNSName(): {signer.DNSRecord()}},
	}

	// The message as it arrives, signed by the sender's server.
	m := exampleMessage(exampleRaw)
	sig, _ := signer.Sign(context.Background(), m)
	m.Header.AddRaw(sig)

	chain := policy.NewChain()
	chain.PreQ("dkim", auth.VerifyDKIM(auth.DKIMVerifyOptions{
		Resolver:   dns,
		AuthServID: "mx.example.org",
	}))
	tx := policy.NewTransaction(&policy.Conn{ID: "c1"}, "q1")
	tx.From = policy.MustParseAddress("alice@example.com")
	chain.EvalPreQ(context.Background(), tx, m)

	results, _ := auth.DKIMResultsKey.Get(tx)
	for _, r := range results {
		fmt.Println(r.Result, r.Domain, r.Selector)
	}
	ar := m.Header.Get("Authentication-Results")
	fmt.Println(ar[:strings.Index(ar, " header")])
	// Output:
	// pass example.com 2025
	// mx.example.org; dkim=pass
}

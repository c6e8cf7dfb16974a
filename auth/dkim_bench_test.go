package auth

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mtakit/mtakit/policy"
)

// benchHeader is the header of a typical submitted message: a few trace
// fields above the ones the signer signs.
const benchHeader = "Received: from client.example.com (client.example.com [192.0.2.10])\r\n" +
	"\tby mx.example.com with ESMTPSA id 4f3a2b1c\r\n\tfor <bob@example.org>; Mon, 2 Jun 2025 10:00:01 +0000\r\n" +
	"From: Alice Example <alice@example.com>\r\n" +
	"To: Bob <bob@example.org>, Carol <carol@example.org>\r\n" +
	"Cc: Dave <dave@example.org>\r\n" +
	"Subject: Quarterly report, second draft\r\n" +
	"Date: Mon, 2 Jun 2025 10:00:00 +0000\r\n" +
	"Message-ID: <20250602100000.1234@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Transfer-Encoding: 8bit\r\n" +
	"User-Agent: bench\r\n" +
	"\r\n"

// benchTextBody returns about n bytes of prose: words split by single
// spaces, lines of about 70 characters, the body of most mail.
func benchTextBody(n int) string {
	words := strings.Fields("the quarterly numbers are in and they look better than we feared, " +
		"although shipping costs went up again; please read the attached draft before Friday " +
		"and send me your comments, corrections and questions")
	var b strings.Builder
	line := 0
	for i := 0; b.Len() < n; i++ {
		w := words[i%len(words)]
		if line > 0 && line+1+len(w) > 70 {
			b.WriteString("\r\n")
			line = 0
		} else if line > 0 {
			b.WriteByte(' ')
			line++
		}
		b.WriteString(w)
		line += len(w)
	}
	b.WriteString("\r\n")
	return b.String()
}

// benchBase64Body returns about n bytes of base64 in 76-column lines, as
// an attachment is sent.
func benchBase64Body(n int) string {
	raw := make([]byte, n*3/4)
	for i := range raw {
		raw[i] = byte(i*7 + i>>8)
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	var b strings.Builder
	for len(enc) > 0 {
		k := min(76, len(enc))
		b.WriteString(enc[:k])
		b.WriteString("\r\n")
		enc = enc[k:]
	}
	return b.String()
}

// benchBody is a message body of about n bytes: 4 KiB of text, then (for
// larger sizes) a base64 attachment, as large mail mostly is.
func benchBody(n int) string {
	text := benchTextBody(min(n, 4<<10))
	if n <= len(text) {
		return text
	}
	return text + "\r\n" + benchBase64Body(n-len(text)-2)
}

// BenchmarkDKIMSign measures (*DKIMSigner).Sign per message for both key
// types and two message sizes; the message is parsed once, so the numbers
// are the signer's own cost (body hashing, header hashing, the key's
// signature, formatting).
func BenchmarkDKIMSign(b *testing.B) {
	for _, k := range []struct {
		name string
		key  func(testing.TB) crypto.Signer
	}{
		{"ed25519", func(testing.TB) crypto.Signer { return testEd25519() }},
		{"rsa2048", func(tb testing.TB) crypto.Signer { return testRSA(tb) }},
	} {
		for _, size := range []int{4 << 10, 100 << 10} {
			b.Run(fmt.Sprintf("%s/%dKiB", k.name, size>>10), func(b *testing.B) {
				signer := newTestSigner(b, "example.com", k.key(b))
				raw := benchHeader + benchBody(size)
				m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				b.SetBytes(int64(len(raw)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := signer.Sign(ctx, m); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkDKIMBodyHashKinds measures relaxed body canonicalization and
// hashing (MB/s) of 1 MiB of two kinds of body, written in the 32 KiB
// pieces dkHashBodyInto reads: prose and base64 (BenchmarkDKIMBodyHash has
// white-space-heavy lines). The sha256 line is the floor: hashing the same
// bytes with no canonicalization.
func BenchmarkDKIMBodyHashKinds(b *testing.B) {
	for _, kind := range []struct{ name, body string }{
		{"text", benchTextBody(1 << 20)},
		{"base64", benchBase64Body(1 << 20)},
	} {
		body := []byte(kind.body)
		b.Run(kind.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				h := newDKBodyHasher(sha256.New(), true, -1)
				for p := body; len(p) > 0; {
					n := min(32<<10, len(p))
					h.Write(p[:n])
					p = p[n:]
				}
				if _, err := h.Sum(); err != nil {
					b.Fatal(err)
				}
				h.free()
			}
		})
	}
	b.Run("sha256", func(b *testing.B) {
		body := []byte(benchTextBody(1 << 20))
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			h := sha256.New()
			h.Write(body)
			h.Sum(nil)
		}
	})
}

// txtMap is an in-memory TXTResolver, so that the benchmark below measures
// the verifier and not a DNS round trip.
type txtMap map[string]string

func (t txtMap) LookupTXT(_ context.Context, name string) ([]string, error) {
	return []string{t[strings.TrimSuffix(name, ".")]}, nil
}

// BenchmarkVerifyDKIM measures the verification of an RSA-2048 signature
// over a 4 KiB message, the key's parse kept between messages (as a
// VerifyDKIM rule keeps it) or redone for each.
func BenchmarkVerifyDKIM(b *testing.B) {
	signer, err := NewDKIMSigner("example.com", "rsa", testRSA(b))
	if err != nil {
		b.Fatal(err)
	}
	raw := benchHeader + benchBody(4<<10)
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	if err != nil {
		b.Fatal(err)
	}
	sig, err := signer.Sign(context.Background(), m)
	if err != nil {
		b.Fatal(err)
	}
	signed := string(sig) + raw
	opts := DKIMVerifyOptions{Resolver: txtMap{signer.DNSName(): signer.DNSRecord()}, MaxVerifications: 5}
	for _, cached := range []bool{false, true} {
		b.Run(fmt.Sprintf("keycache=%v", cached), func(b *testing.B) {
			var keys *dkKeyCache
			if cached {
				keys = &dkKeyCache{}
			}
			b.ReportAllocs()
			start, ok := processCPU()
			defer func() { reportCPU(b, start, ok) }()
			for b.Loop() {
				m, err := policy.NewMessage(strings.NewReader(signed), int64(len(signed)), nil)
				if err != nil {
					b.Fatal(err)
				}
				res, err := verifyDKIM(context.Background(), opts, m, keys)
				if err != nil || len(res) != 1 || res[0].Result != "pass" {
					b.Fatalf("%v %+v", err, res)
				}
			}
		})
	}
}

// benchSignedMessage returns a message as a receiving server sees it: our
// Received field on top, the sender's DKIM-Signature (RSA-2048, relaxed/relaxed)
// below it, then a typical header and a body of about size bytes; and the
// resolver that holds the signer's key and example.com's DMARC policy.
func benchSignedMessage(b *testing.B, size int) (string, txtMap) {
	signer, err := NewDKIMSigner("example.com", "rsa", testRSA(b))
	if err != nil {
		b.Fatal(err)
	}
	raw := benchHeader + benchBody(size)
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	if err != nil {
		b.Fatal(err)
	}
	sig, err := signer.Sign(context.Background(), m)
	if err != nil {
		b.Fatal(err)
	}
	received := "Received: from mail.example.com (mail.example.com [192.0.2.25])\r\n" +
		"\tby mx.example.org (mtakit) with ESMTPS id q1\r\n\tfor <bob@example.org>; Mon, 2 Jun 2025 10:00:02 +0000\r\n"
	return received + string(sig) + raw, txtMap{
		signer.DNSName():     signer.DNSRecord(),
		"_dmarc.example.com": "v=DMARC1; p=reject; rua=mailto:dmarc@example.com",
	}
}

// BenchmarkAuthRules measures, per 4 KiB message, the ready-made rules a
// receiving server runs after DATA (VerifyDKIM, CheckDMARC, and both in a
// row), as the server calls them: a fresh transaction and message each time
// (the parse of the message is included: policy.NewMessage, about 3 µs),
// key and policy records from an in-memory resolver (a cache hit).
func BenchmarkAuthRules(b *testing.B) {
	signed, res := benchSignedMessage(b, 4<<10)
	spf := SPFResult{Result: SPFPass, Domain: "example.com", Identity: "mailfrom"}
	dkim := VerifyDKIM(DKIMVerifyOptions{Resolver: res, AuthServID: "mx.example.org"})
	dmarcRule := CheckDMARC(DMARCOptions{Resolver: res, AuthServID: "mx.example.org"})
	run := func(b *testing.B, rules ...policy.MessageRule) {
		ctx := context.Background()
		b.ReportAllocs()
		start, ok := processCPU()
		defer func() { reportCPU(b, start, ok) }()
		for b.Loop() {
			tx := newTestTx("alice@example.com")
			SPFResultKey.Set(tx, spf)
			m, err := policy.NewMessage(strings.NewReader(signed), int64(len(signed)), nil)
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range rules {
				if v := r(ctx, tx, m); v.Decides() {
					b.Fatalf("verdict %v", v)
				}
			}
			// The work measured is the work of a pass.
			if d, _ := DKIMResultsKey.Get(tx); len(d) != 1 || d[0].Result != "pass" {
				b.Fatalf("dkim %+v", d)
			}
			if r, ok := DMARCResultKey.Get(tx); ok && r.Result != "pass" {
				b.Fatalf("dmarc %+v", r)
			}
		}
	}
	b.Run("VerifyDKIM", func(b *testing.B) { run(b, dkim) })
	b.Run("CheckDMARC", func(b *testing.B) {
		// DMARC reads the DKIM results VerifyDKIM would have stored.
		run(b, func(ctx context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
			DKIMResultsKey.Set(tx, []DKIMResult{{Result: "pass", Domain: "example.com", Selector: "mtakit"}})
			return policy.Next()
		}, dmarcRule)
	})
	b.Run("both", func(b *testing.B) { run(b, dkim, dmarcRule) })
}

// reportCPU reports the process's CPU time per iteration since start (GC
// and every other thread included) as cpu-ns/op: the figure that matters
// for a server's CPU per message, and less disturbed than ns/op when
// other processes share the machine.
func reportCPU(b *testing.B, start time.Duration, ok bool) {
	if end, ok2 := processCPU(); ok && ok2 && b.N > 0 {
		b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
	}
}

package jetstream_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/jetstream"
)

// An embedded single-node JetStream server (fsync before every ack) and
// the queue on it: what smtp hands it (Enqueue), the admin operations see.
// In a fleet, Open each node's Store on the cluster instead:
// jetstream.Config{URL: "nats://n1:4222,nats://n2:4222,nats://n3:4222", Replicas: 3}.
func ExampleStartEmbedded() {
	dir, err := os.MkdirTemp("", "mtaq")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.DiscardHandler)
	srv, err := jetstream.StartEmbedded(jetstream.EmbeddedConfig{Dir: dir, Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	st, err := jetstream.Open(ctx, jetstream.Config{URL: srv.URL(), Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()

	tx := policy.NewTransaction(&policy.Conn{ID: "c1"}, "msg1")
	tx.From = policy.MustParseAddress("alice@example.net")
	tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("bob@example.org")}}
	raw := "Subject: hello\r\n\r\nHi Bob.\r\n"
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := st.Enqueue(ctx, tx, m); err != nil {
		log.Fatal(err) // the SMTP server answers 451 4.3.0
	}
	admin := &queue.Admin{Store: st}
	if err := admin.Hold(ctx, "msg1"); err != nil {
		log.Fatal(err)
	}
	l, err := admin.List(queue.Hold)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range l {
		fmt.Println(e.Queue, e.ID, e.Envelope.From, "->", e.Envelope.Rcpts[0].Addr)
	}
	// Output:
	// hold msg1 alice@example.net -> bob@example.org
}

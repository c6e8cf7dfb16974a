package journal_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/journal"
)

// A journal is a queue.Store: the scheduler delivers from it, and the smtp
// package accepts into it (Enqueue).
func Example() {
	dir, err := os.MkdirTemp("", "journal")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	st, err := journal.Open(ctx, journal.Config{Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()

	raw := "From: a@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
	m, err := policy.NewMessage(strings.NewReader(raw), int64(len(raw)), nil)
	if err != nil {
		log.Fatal(err)
	}
	tx := policy.NewTransaction(&policy.Conn{ID: "c1"}, "q1")
	tx.From = policy.MustParseAddress("a@example.org")
	tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("b@example.com")}}
	if err := st.Enqueue(ctx, tx, m); err != nil { // durable when it returns
		log.Fatal(err)
	}
	ids, _ := st.IDs(queue.Working)
	fmt.Println(ids)
	// Output: [q1]
}

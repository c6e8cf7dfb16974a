package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
)

// outcome is what the client of one message saw.
type outcome int

const (
	accepted outcome = iota + 1 // 250 after DATA: the message must be delivered
	refused                     // an SMTP error reply: the client keeps it
	unknown                     // the connection broke after DATA was sent: either
)

// loadLog records every message the load sent and what came of it.
type loadLog struct {
	mu       sync.Mutex
	outcomes map[string]outcome // by Subject
	ids      map[string]string  // queue IDs of the accepted, by Subject (from the 250's "queued as")
	replies  map[string]int     // error replies by "code enhanced", for the report
	perNode  []atomic.Int64     // 250s per doe-family node
}

func newLoadLog(nodes int) *loadLog {
	return &loadLog{outcomes: map[string]outcome{}, ids: map[string]string{}, replies: map[string]int{}, perNode: make([]atomic.Int64, nodes)}
}

func (l *loadLog) record(subject, id string, node int, err error, afterData bool) outcome {
	o := accepted
	var se *gosmtp.SMTPError
	switch {
	case err == nil:
		l.perNode[node].Add(1)
	case errors.As(err, &se):
		o = refused
	case afterData:
		o = unknown
	default:
		o = refused // the connection failed before DATA: never sent
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.outcomes[subject] = o
	if o == accepted {
		l.ids[subject] = id
	}
	if se != nil {
		l.replies[fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])]++
	}
	return o
}

func (l *loadLog) count(o outcome) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, v := range l.outcomes {
		if v == o {
			n++
		}
	}
	return n
}

// sendTracked sends one message to addr and tells whether DATA was sent
// (when the reply to it is missing, the outcome is unknown) and, after a
// 250, the queue ID it gave.
func sendTracked(addr, from, to, msg string) (afterData bool, id string, err error) {
	conn, err := dialFrom("127.0.0.1", addr)
	if err != nil {
		return false, "", err
	}
	c := gosmtp.NewClient(conn)
	c.CommandTimeout = 30 * time.Second
	c.SubmissionTimeout = 30 * time.Second
	defer c.Close()
	if err := c.Hello("load.doe-family.com"); err != nil {
		return false, "", err
	}
	if err := c.Mail(from, nil); err != nil {
		return false, "", err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return false, "", err
	}
	w, err := c.Data()
	if err != nil {
		return false, "", err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return true, "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return true, "", err
	}
	c.Quit()
	_, id, _ = strings.Cut(resp.StatusText, "queued as ")
	return true, strings.TrimSuffix(id, ")"), nil
}

// subjectsAt counts the messages at the sink by Subject.
func subjectsAt(s *sink) map[string]int {
	got := map[string]int{}
	for _, m := range s.received() {
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			continue
		}
		got[msg.Header.Get("Subject")]++
	}
	return got
}

// TestClusterFaults is the fault test of the JetStream queue with real
// processes on loopback: a 3-node NATS cluster (sync_interval: always, R3
// streams) and 3 doe-family nodes on one queue, load spread over the
// three. While messages flow, one doe-family node and then one NATS node
// are killed with SIGKILL. Every message that got a 250 must reach the
// relayhost (at least once: duplicates are counted and reported),
// delivery must go on from the survivors, and with a second NATS node
// down (no quorum) the nodes must answer 451 4.3.0, never 250.
func TestClusterFaults(t *testing.T) {
	integration(t)
	start := time.Now()
	c := startNATSCluster(t, 3)
	relay := startSink(t, freePort(t))
	nodes := make([]*env, 3)
	for i := range nodes {
		nodes[i] = newEnv(t, "-queue", c.url(), "-node", fmt.Sprintf("doe%d", i+1), "-relayhost", relay.addr,
			"-internal", "127.0.0.0/8", "-rate-limit", "off", "-queue-timeout", "5s")
	}
	t.Logf("cluster and nodes up in %v", time.Since(start).Round(time.Millisecond))
	// MTAKIT_FAULT_LOGDIR=dir keeps every node's log (doe-family and
	// nats-server) there, for a diagnosis.
	if dir := os.Getenv("MTAKIT_FAULT_LOGDIR"); dir != "" {
		t.Cleanup(func() {
			os.MkdirAll(dir, 0o755)
			for i, n := range nodes {
				os.WriteFile(filepath.Join(dir, fmt.Sprintf("doe%d.log", i+1)), []byte(n.stdout.String()+n.logs.String()), 0o644)
			}
			for _, nd := range c.nodes {
				os.WriteFile(filepath.Join(dir, nd.name+".log"), []byte(nd.log.String()), 0o644)
			}
		})
	}

	log := newLoadLog(len(nodes))
	var dead [3]atomic.Bool // doe-family nodes killed: the load skips them, as an MTA skips a dead MX
	var stop atomic.Bool
	var seq atomic.Int64
	var wg sync.WaitGroup
	const workers = 6
	for w := range workers {
		wg.Go(func() {
			for i := w; !stop.Load(); i++ {
				n := i % len(nodes)
				if dead[n].Load() {
					continue
				}
				subject := fmt.Sprintf("fault-%d", seq.Add(1))
				afterData, id, err := sendTracked(nodes[n].listen, "load@doe-family.com", "someone@ext.test",
					message("load@doe-family.com", "someone@ext.test", subject, "fault test"))
				log.record(subject, id, n, err, afterData)
			}
		})
	}
	stopLoad := func() { stop.Store(true); wg.Wait() }
	defer stopLoad()
	waitAccepted := func(n int, what string) {
		t.Helper()
		target := log.count(accepted) + n
		waitFor(t, 60*time.Second, what, func() bool { return log.count(accepted) >= target })
	}

	waitAccepted(60, "60 messages accepted by the three nodes")
	dead[0].Store(true)
	nodes[0].cmd.Process.Kill() // SIGKILL: whatever node 1 held in flight is another node's to deliver
	<-nodes[0].exited
	t.Logf("killed doe1 after %d accepted", log.count(accepted))
	waitAccepted(40, "40 more messages accepted by the two surviving doe-family nodes")
	c.kill(0)
	t.Logf("killed nats1 after %d accepted", log.count(accepted))
	waitAccepted(40, "40 more messages accepted with one NATS node down")
	stopLoad()
	acc, ref, unk := log.count(accepted), log.count(refused), log.count(unknown)
	t.Logf("load: %d accepted (doe1 %d, doe2 %d, doe3 %d), %d refused %v, %d unknown (connection cut after DATA)",
		acc, log.perNode[0].Load(), log.perNode[1].Load(), log.perNode[2].Load(), ref, log.replies, unk)

	// Every 250 is delivered, by the survivors, whatever doe1 held.
	var missing []string
	stopped := time.Now()
	deadline := stopped.Add(90 * time.Second)
	for {
		got := subjectsAt(relay)
		missing = missing[:0]
		for s, o := range log.outcomes {
			if o == accepted && got[s] == 0 {
				missing = append(missing, s)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	sort.Strings(missing)
	t.Logf("waited %v for the deliveries after the load stopped", time.Since(stopped).Round(time.Millisecond))
	if !assert.Empty(t, missing, "messages that got a 250 and were never delivered") {
		// What the nodes logged of trouble and of the missing messages,
		// for the diagnosis.
		for i, n := range nodes {
			for _, line := range strings.Split(n.logs.String(), "\n") {
				if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
					t.Logf("doe%d: %s", i+1, line)
				}
				for _, s := range missing {
					if id := log.ids[s]; id != "" && strings.Contains(line, id) {
						t.Logf("doe%d: %s: %s", i+1, s, line)
					}
				}
			}
		}
	}
	got := subjectsAt(relay)
	dups, extra := 0, 0
	for s, n := range got {
		if n > 1 {
			dups++
			extra += n - 1
		}
		if o := log.outcomes[s]; o == refused {
			t.Logf("note: %s was refused yet delivered", s)
		}
	}
	t.Logf("delivered: %d distinct messages, %d delivered more than once (%d extra copies); of the %d unknown outcomes, %d delivered",
		len(got), dups, extra, unk, countDelivered(log, got, unknown))

	// Two NATS nodes down: no quorum. The surviving nodes must refuse with
	// 451 4.3.0 and never answer 250.
	c.kill(1)
	var nq sync.WaitGroup
	var mu sync.Mutex
	var replies []string
	for i := range 6 {
		n := 1 + i%2
		nq.Go(func() {
			subject := fmt.Sprintf("noquorum-%d", i)
			_, _, err := sendTracked(nodes[n].listen, "load@doe-family.com", "someone@ext.test",
				message("load@doe-family.com", "someone@ext.test", subject, "no quorum"))
			r := "250"
			if err != nil {
				r = err.Error()
				var se *gosmtp.SMTPError
				if errors.As(err, &se) {
					r = fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
				}
			}
			mu.Lock()
			replies = append(replies, r)
			mu.Unlock()
		})
	}
	nq.Wait()
	for _, r := range replies {
		assert.Equal(t, "451 4.3.0", r, "without quorum: try again later, never 250")
	}
	t.Logf("no quorum: replies %v; whole test %v", replies, time.Since(start).Round(time.Second))
	for s := range subjectsAt(relay) {
		assert.False(t, strings.HasPrefix(s, "noquorum-"), "%s delivered without quorum", s)
	}
}

func countDelivered(l *loadLog, got map[string]int, o outcome) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for s, v := range l.outcomes {
		if v == o && got[s] > 0 {
			n++
		}
	}
	return n
}

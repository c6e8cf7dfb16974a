package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	mtajs "github.com/mtakit/mtakit/queue/jetstream"
	"github.com/mtakit/mtakit/queue/jetstream/kv"
)

// cluster is doe-family's side of NATS JetStream, with -queue nats://...
// (a cluster run apart) or -nats-embedded DIR (a single-node JetStream
// inside this process, to try the JetStream queue without a cluster).
// The queue lives there, and so does the state the nodes of a fleet must
// agree on: rate limits, greylisting triplets, AUTH failure counts.
type cluster struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	embedded *mtajs.Embedded // -nats-embedded; nil otherwise
	replicas int             // of every stream and bucket
	node     string
}

// queueJournal is the -queue value of the journal (queue/journal) in
// -spool.
const queueJournal = "journal"

// natsURLs turns -queue's nats://host:port[,host:port...] into the
// client's server list.
func natsURLs(q string) (string, error) {
	rest, ok := strings.CutPrefix(q, "nats://")
	if !ok {
		return "", fmt.Errorf("-queue: want nats://host:port[,host:port...], not %q", q)
	}
	var urls []string
	for _, hp := range strings.Split(rest, ",") {
		hp = strings.TrimPrefix(strings.TrimSpace(hp), "nats://")
		if hp == "" {
			continue
		}
		if !strings.Contains(hp, ":") {
			return "", fmt.Errorf("-queue: %q: want host:port", hp)
		}
		urls = append(urls, "nats://"+hp)
	}
	if len(urls) == 0 {
		return "", errors.New("-queue: no server in nats://")
	}
	return strings.Join(urls, ","), nil
}

// connectCluster connects to the cluster of -queue, or starts the
// embedded server of -nats-embedded; nil when neither is set (the
// filesystem spool).
func connectCluster(cfg *config, log *slog.Logger) (*cluster, error) {
	if (cfg.queue == "" || cfg.queue == queueJournal) && cfg.natsEmbedded == "" {
		return nil, nil
	}
	c := &cluster{node: cfg.node, replicas: cfg.natsReplicas}
	opts := []nats.Option{
		nats.Name("doe-family " + cfg.node),
		// A node of the cluster that dies must not end this process's
		// connection: the client moves to another server, for ever.
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "server", nc.ConnectedUrlRedacted()) }),
	}
	var url string
	if cfg.natsEmbedded != "" {
		// Loopback only, fsync at every write (sync_interval: always).
		e, err := mtajs.StartEmbedded(mtajs.EmbeddedConfig{Dir: cfg.natsEmbedded, Name: cfg.node, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("-nats-embedded: %w", err)
		}
		c.embedded, url = e, e.URL()
		if c.replicas == 0 {
			c.replicas = 1
		}
	} else {
		var err error
		if url, err = natsURLs(cfg.queue); err != nil {
			return nil, err
		}
		if c.replicas == 0 {
			c.replicas = 3
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("-queue: %w", err)
	}
	c.nc = nc
	if c.js, err = jetstream.New(nc); err != nil {
		c.close()
		return nil, fmt.Errorf("-queue: %w", err)
	}
	log.Info("NATS JetStream connected", "server", nc.ConnectedUrlRedacted(), "node", cfg.node, "replicas", c.replicas,
		"embedded", c.embedded != nil)
	return c, nil
}

// bucket opens the key-value bucket of some shared state, whose values
// live ttl after their last write (as long as the state matters; see
// package kv). nil, nil without a cluster.
func (c *cluster) bucket(bucket string, ttl time.Duration) (*kv.Store, error) {
	if c == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := kv.Open(ctx, c.js, kv.Config{Bucket: bucket, TTL: ttl, Replicas: c.replicas})
	if err != nil {
		return nil, fmt.Errorf("-queue: %w", err)
	}
	return s, nil
}

// openQueue opens the JetStream queue: stream, object store and consumer
// with the cluster's replicas. timeout bounds each change of the queue,
// an Enqueue above all: without a quorum (two of three servers down) a
// publish gets no answer at all, and the client would otherwise wait for
// the whole DATA timeout (10 minutes) before its 451 4.3.0.
func (c *cluster) openQueue(timeout time.Duration, log *slog.Logger) (*mtajs.Store, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := mtajs.Open(ctx, mtajs.Config{Conn: c.nc, Replicas: c.replicas, Timeout: timeout, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("-queue: %w", err)
	}
	return st, nil
}

// close ends the connection and stops the embedded server.
func (c *cluster) close() {
	if c == nil {
		return
	}
	if c.nc != nil {
		c.nc.Close()
	}
	if c.embedded != nil {
		c.embedded.Close()
	}
}

// Package jetstream keeps mtakit's queue on a NATS JetStream cluster, so
// that mail accepted by any node of a fleet is delivered by any node, and a
// lost node (process, disk or machine) loses no acknowledged message of a
// replicated stream. The filesystem spool (queue.Spool) stays the embedded
// default; a Store here takes its place where several nodes share one
// queue: it is a queue.Store (a queue.SharedStore), an smtp.Queue
// (Enqueue) and so an mtakit.Store, and the admin operations run on it
// through queue.Admin (&queue.Admin{Store: st}).
//
//	st, err := jetstream.Open(ctx, jetstream.Config{URL: "nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222", Replicas: 3})
//	...
//	srv := &mtakit.Server{Store: st, ...}
//
// # Layout
//
// Envelopes are JSON messages (queue.Envelope) in one work-queue stream
// (Config.Stream, default "MTAQ"), one subject per message and queue:
//
//	mtaq.env.<id>.working | deliver | deferred | hold | dead | corrupt | quarantine.<name>
//	mtaq.att.<id>          the record of a delivery attempt under way (SaveUnsynced)
//
// (a "." of an ID or quarantine name is written "~" in a subject). The
// stream keeps one message per subject; the highest sequence among an
// ID's subjects is its current state. Message bodies are objects of a
// JetStream object store (Config.Bucket, default "MTAQ_BODIES"), chunked
// (128 KiB chunks, each filled whole: a message under 128 KiB is one
// chunk), so a 25 MiB message is as fine as a 4 KiB one; the envelope's
// header "Mtaq-Body" names its object. Every change of an
// envelope is published with the expected stream, a message ID
// (Nats-Msg-Id, de-duplicated within the stream's window) and the expected
// last sequence of the ID's subjects (mtaq.env.<id>.>): a compare-and-set,
// so that two nodes changing one message never both succeed.
//
// IDs and Queues read the stream's per-subject state (stream info with a
// subject filter); Load reads an ID's last message (a get of the last
// message of its subjects) and its body object (its meta, then each
// chunk, a get each; not through an ordered consumer, which needs the
// cluster's meta leader and may sit on a lagging or dead replica). With
// replicas, every read is answered by the stream's leader (direct gets,
// which any replica answers, are off: a replica may lag the quorum that
// acknowledged a write); with one replica, which is the leader, they are
// direct gets, answered by the stream itself rather than through the
// server's JetStream API queue.
//
// # The path of a message through the cluster
//
//	client ─▶ node A: SMTP, rules, DATA
//	   ─▶ A: body ─▶ object store MTAQ_BODIES (chunks, each replicated to R nodes; PubAck of every chunk and of the object's meta)
//	   ─▶ A: envelope ─▶ mtaq.env.<id>.working (expected stream, Nats-Msg-Id <id>, expected last sequence 0: new)
//	   ─▶ PubAck from the stream leader once a quorum of the R replicas stored it
//	   ─▶ A answers 250 (any error before: 451 4.3.0, the client retries)
//	   ─▶ consumer "sched" (filter working, deliver, deferred; explicit ack) hands the message to ONE node, B
//	      (not due yet, Envelope.NextAttempt later: B naks it with that delay, and it comes back then, to any node)
//	   ─▶ B's scheduler: postq rules, attempt record (mtaq.att.<id>), delivery rules, transports;
//	      in-progress acks every AckWait/3 while B works on it
//	   ─▶ B records the outcome: delivered: the envelope, attempt record and body are deleted;
//	      deferred / dead / quarantine: a new envelope on its subject (compare-and-set), the old one acked away
//	   ─▶ B dies before that: no ack, so after AckWait the consumer hands the message to C, which finds
//	      B's attempt record (InFlight) and makes the attempt again (at least once), as a restarted spool does.
//
// The retry schedule (5 min doubling to 4 h, lifetime 5 days), DSNs and
// delay warnings are the scheduler's (queue.Config), the same as with the
// spool; a deferred message waits in the stream until its next attempt (a
// nak with delay, which keeps it among the consumer's pending acks: the
// consumer has no MaxAckPending limit, and its state grows with the
// deferred messages), so no node keeps timers for it. Delay warnings come
// with the attempts, not between them.
//
// # Durability: the exact guarantee
//
// Enqueue returns nil (and the SMTP client gets its 250) only after the
// PubAck of every chunk of the body, of the body's meta and of the
// envelope, from streams with Config.Replicas replicas. A PubAck of an R3
// stream means a quorum (2 of 3) of the servers stored the message; it
// does NOT mean it reached their disks: a JetStream server acknowledges
// before fsync, flushing every sync_interval (2 minutes by default),
// unless it runs with `sync_interval: always` (each write fsynced before
// the ack; slower). So:
//
//   - R3, any sync_interval: the loss of one server (process, machine or
//     disk) loses nothing acknowledged.
//   - R3 with `sync_interval: always`: a simultaneous power loss of every
//     server loses nothing acknowledged either, as far as NATS keeps its
//     promise; a Jepsen analysis of NATS 2.12 (2025) lost acknowledged
//     writes in coordinated power losses, so do not count on it alone:
//     keep the servers on independent power and disks.
//   - R1 (Config.Replicas 0 or 1, and the embedded server): the server's
//     disk is the only copy; StartEmbedded runs with sync always, so a
//     crash of the machine loses nothing acknowledged, the loss of its
//     disk loses everything queued.
//
// Nothing acknowledged is acked away on the strength of a read that may
// lag. An ack deletes a message from the work-queue stream, and the
// consumer may hand a message out before the stream leader, which answers
// every read, has applied it (the consumer's leader may be a follower that
// applied the committed write first): a node that then finds no envelope,
// or an older one than it was handed, puts the message back (a nak) to be
// handed out again, and acks a copy away only when a newer envelope of the
// same message exists. A body is set aside as corrupt only after three
// reads over a few seconds all failed so. A body stored while the
// connection to the servers dropped and came back is not trusted (the
// Enqueue fails: nats.go before v1.55 may report such a store as done
// without its acknowledgements). examples/doe-family's
// TestClusterFaults checks all of this with real processes (three
// nats-server, three doe-family; SIGKILL of a doe-family node and of a
// NATS node under load): every message that got a 250 is delivered.
//
// Delivery is at least once, as with the spool: a node that dies after a
// delivery and before its record, or a node cut off longer than AckWait
// while delivering, makes another node deliver again. A delivered
// message whose removal fails (the servers out of reach), or a message
// whose outcome record fails after an attempt (some recipients delivered),
// stays held by its node (in-progress acks) while its scheduler retries
// the removal or the record, so that no node delivers it again meanwhile;
// if the node stops first, the message goes back to the consumer and is
// delivered again to the recipients its attempt record left pending.
//
// One node works on a message at a time (the consumer's explicit acks and
// in-progress acks); its changes are conditional on the message's last
// sequence, so an operator's change made on another node during an attempt
// wins and the attempt's record fails (logged); the scheduler then saves
// the recipients' outcomes of the attempt into the operator's state, and
// the message goes on from there (see queue's package doc, outcome
// pending). queue.Store.Lock only orders the work of one process.
//
// # A three-node cluster
//
// Each of three machines runs nats-server (the Debian package
// nats-server, or the module's binary) with a configuration like
//
//	server_name: n1            # n2, n3 on the others
//	listen: 0.0.0.0:4222
//	jetstream { store_dir: /var/lib/nats, sync_interval: always }
//	cluster {
//	  name: mtaq
//	  listen: 0.0.0.0:6222
//	  routes: [nats-route://n1:6222, nats-route://n2:6222, nats-route://n3:6222]
//	}
//
// and each mail node opens its Store with Config{URL:
// "nats://n1:4222,nats://n2:4222,nats://n3:4222", Replicas: 3}. The first
// Open creates the R3 stream, object store and consumer; the others find
// them. Secure the client and route ports (TLS, credentials) as for any
// NATS deployment: whoever reaches them can read and change the queue.
//
// # Configuration and logging
//
// Open takes a Config (the connection or URL, stream, bucket and
// consumer names, replicas, ack wait, how many messages a node holds at
// once, clock, logger, DSN support), read once; StartEmbedded takes an
// EmbeddedConfig. Logger nil means slog.Default(). Neither may be changed
// once in use.
package jetstream

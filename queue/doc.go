// Package queue is the durable part of mtakit: the spool that holds
// accepted mail, the named queues a message moves through, the scheduler
// that runs the postq and delivery stages and retries, the DSNs (RFC 3464)
// it sends back, an admin API, and the local transports Maildir and Mbox.
//
// # Spool
//
// Open returns a Spool on a directory. The smtp package hands it accepted
// messages with Enqueue, which returns only when the message's entry (one
// file: the message, then its envelope as a JSON record, see Envelope) and
// its directory entry are durable: only then may the client get its 250.
// Concurrent Enqueue calls share their syncs (group commit). On Linux each
// writes its entry (in tmp/, or over a file of free/), renames it into its
// queue (it stays invisible until its commit returns), then joins a round
// of its filesystem's shared syncs: one syncfs(2) makes durable the data
// and renames of every enqueue waiting meanwhile; the first waiter runs
// it, so no goroutine hand-off is paid. The rounds and the
// filesystem handles they go through belong to the Spool (two spools share
// nothing), and Close releases them. Elsewhere a committer goroutine
// batches the enqueues: each file is fsynced, then renamed, then each
// directory fsynced.
// SpoolConfig.UnsafeNoSync turns syncing off, for benchmarks only.
//
// A change of envelope appends a record to the entry (the last valid one
// counts; a record torn by a crash is ignored), and a move between queues
// renames it: the stored message is written once and never copied. The
// record of a delivery attempt, written just before it, is not synced
// (SaveUnsynced): a crash of the process keeps it, a crash of the machine
// repeats the attempt. A delivered entry's file goes to free/ and a later
// entry is written over it once nobody reads it, so that the spool does
// not create and unlink a file per message (see recycleEntries).
//
// A message's state is the place of its entry: working (accepted, postq
// rules not yet run), deliver, deferred, hold, dead, quarantine/<name>,
// corrupt (dead and the quarantines are purged after a retention, see
// below; hold is kept until released).
// List, Show, ReadMessage, Requeue, Move, Hold, Release, Bounce and Delete
// (see Admin) administer them while the scheduler runs (each waits for the message's
// delivery attempt under way, if any); package queue/admin serves them as
// an HTTP API. Hold keeps a message waiting for delivery out of it until
// Release; Release sends a held or quarantined message on to delivery
// without running the postq rules again; Bounce fails the recipients left
// and has the scheduler return the message to its sender in a DSN, then
// delete it.
//
// Open takes an exclusive lock on the directory: one spool, one process.
//
// The package builds on Windows, but a spool has not been run there: it
// keeps entry files open while renaming them, which Windows refuses to
// files Go opened without FILE_SHARE_DELETE.
//
// # Configuration and logging
//
// Each component is configured by the exported fields of a struct, every
// field's zero value a documented default; there are no option functions.
// Open takes a SpoolConfig (logger, clock, DSN support, the unsafe no-sync
// mode of benchmarks) and NewScheduler a Config (rules, transports, routes,
// workers, backoff, lifetime, DSN sender, delay notifications, retention,
// clock, logger); both read their struct once.
// Maildir and Mbox are configured by their own fields (&Maildir{Root: dir}),
// which must not change once in use.
// The Events field of Config (delivery attempts, DSNs) and of SpoolConfig
// (commit rounds), nil by default, reports to metrics (see Events; the
// package mtakit/policy/metrics implements it).
//
// Admin is configured by its fields (Store, Clock) and logs nothing.
// Logging goes to the Logger field of SpoolConfig (the spool: corrupt
// entries set aside) and of Config (the scheduler: postq outcomes,
// deliveries, DSNs, interrupted attempts, purges, errors), each nil
// meaning slog.Default(). Every line about a message carries its queue ID
// under "id" (the key the smtp package's lines use too). Each recipient
// gets one INFO line "queue: result" when its delivery ends, Postfix
// style: id, from, to, relay (the transport), delay (seconds since it was
// received), attempts, dsn (the enhanced code), status (delivered,
// bounced, expired, quarantined) and reply; a deferred attempt writes the
// same line with status=deferred. There is no
// other way to set a logger, and no package-level setting or state: the
// sync rounds and handles live in the Spool (and in the Maildir), not in
// the package.
//
// # Storage
//
// The scheduler and the admin operations work on a Store, a small
// interface of what they need and nothing of how messages are kept: watch
// arrivals, list queues and IDs, lock an ID in this process, load, save
// (with a move between queues, header edits or a replaced body), record an
// attempt without waiting for durability, remove, set aside, add (DSNs).
// *Spool is the embedded implementation on the local filesystem (a file
// per message); package queue/journal keeps the queue of one machine in an
// append-only journal instead (segment files, one fdatasync per group of
// changes); package queue/jetstream keeps the queue on a NATS JetStream cluster shared by
// several nodes, a SharedStore: the store decides which node works on which
// message and when (Claim), so the scheduler then scans nothing and keeps
// no retry timers. Package queue/queuetest is the conformance suite every
// store runs.
//
// Admin (&Admin{Store: st}) is the one implementation of the operators'
// operations over any Store: List, Show, ReadMessage, Requeue, Move, Hold,
// Release, Bounce and Delete; *Spool's methods of those names go through
// it, and queue/admin serves any of them (admin.Queue) as an HTTP API.
//
// # Scheduler
//
// A Scheduler takes messages from working (postq rules: accept goes on to
// delivery, quarantine moves to quarantine/<name>, a 5xx deny bounces, a
// 4xx deny or a rule failure defers), then runs the delivery rules per
// recipient, groups recipients by Route and hands each group to the
// Transport the route names ("drop" is built in). 2xx replies are
// delivered, 4xx retried with exponential backoff (5 min doubling to 4 h,
// for 5 days by default, with jitter), 5xx bounced. Only the recipients that
// failed temporarily are retried. Header edits of postq rules (a
// DKIM-Signature) are saved in the envelope (the header block as the rules
// left it, Envelope.Head) with the attempt record, and applied when the
// message is loaded, so a retry neither loses them nor makes them twice,
// and the body is not copied; only a rule that replaced the body makes a
// new entry file.
//
// On start the scheduler picks up everything in working, deliver and
// deferred. A corrupt envelope or message (unparsable, truncated) is moved
// to corrupt with an error log entry; the queue goes on. Delivery is at
// least once: a crash between a delivery and its record may deliver twice.
// Before each attempt the attempt count, the time of the next attempt and
// the mark of an attempt under way (Envelope.InFlight) are saved (with the
// move out of working and the postq header edits, in one commit); the
// record of the outcome clears the mark.
//
// A message found with the mark (the process stopped during its attempt:
// a crash, kill -9) is tried again at once when the scheduler starts, as
// Postfix does, not after its backoff. The crashed attempts are counted in
// the envelope (Envelope.Crashes); after 3 in a row the message waits for
// its backoff, as after a temporary failure, and a warning says why
// ("delivery attempt N of message X did not finish: the process stopped
// during it; backing off"), so a message that crashes the process every
// time cannot keep it in a crash loop nor hammer a destination. An attempt
// that finishes, or an operator's Requeue or Move, resets the count; an
// attempt whose outcome could not be recorded (an I/O error) is kept in
// memory until it is (outcome pending, below), and counts as interrupted
// only when the process, or Run, stopped before.
//
// A delivered message (or one returned to its sender) whose removal fails
// (Store.Remove returns an error: a full disk, a store out of reach) is
// kept by the scheduler as delivered, removal pending, with any Store: it
// is never handed to a transport again by that Scheduler (a wake-up, an
// operator's Requeue, a restart of Run find it pending and leave it), and
// the removal is retried, after min(MinBackoff, 1s) doubling up to
// min(MaxBackoff, 1 min), until it succeeds or Run stops, from whatever
// queue the message is in by then (an operator's Delete ends it too). The
// first failure is logged at ERROR ("cannot remove delivered message X;
// it is not delivered again, and its removal is retried"), the retries at
// DEBUG, the removal at INFO. With a SharedStore the scheduler keeps the
// message's claim meanwhile, so no other process is handed it either.
// This state is in memory: when Run stops, one last removal is tried, and
// a message still there (its claim released) is found by the next
// Scheduler or process as its attempt record left it, an attempt under
// way, and delivered again: at least once still holds across a restart or
// a crash, and exactly once holds within one running scheduler.
//
// The same holds when the record of an attempt's outcome fails (the
// Store.Save that moves the message to deferred, some recipients left, or
// to dead, some failed): the store still has the message as its attempt
// record left it, the recipients just delivered still pending there. The
// scheduler keeps the outcome in memory, outcome pending (the recipients'
// states, the DSNs already queued, the next attempt, the last error, the
// queue it goes to): the message is not handed to a transport meanwhile
// (a wake-up or an operator's requeue makes it try the record at once
// instead), and the record is retried with the same backoff and logging
// (ERROR "cannot record the outcome of the attempt on message X; it is
// not delivered again meanwhile, and the record is retried" once, DEBUG
// for the retries, INFO when it is recorded) and the same SharedStore
// claim kept. Each retry loads the message first: if it is still as the
// attempt record left it, the outcome is saved as it was meant to be, and
// the message goes on as if the first record had succeeded (deferred: its
// next attempt, for its pending recipients only; dead: it stays there). If
// an operator changed it meanwhile (requeue, hold, move, release, bounce),
// the change stands (its queue, its next attempt) and the recipients'
// outcomes are saved into it where it is: a delivered recipient is not
// delivered again, and a DSN already queued is not queued again (an
// operator's change is told by the queue, next attempt, attempt mark or
// Returned flag the store has, each of which every change of Admin
// alters). A message deleted meanwhile drops its outcome (logged at
// INFO). The record of a delay DSN (Envelope.DelayWarned) that fails is
// kept the same way, so that the DSN is not queued again. When Run stops, a
// last try is made, and an outcome still not recorded is given back (its
// claim released, a WARN says how many): a later Run of the same Scheduler
// goes on retrying it, but another Scheduler or process, like a crash,
// finds the message as its attempt record left it and tries again the
// recipients pending there, delivered ones included, with their DSNs (at
// least once).
//
// In-flow control (Scheduler.Admit, which mtakit.Server calls before it
// stores each message its SMTP server accepts): when clients send faster
// than the workers deliver, so that more than Config.InFlowLimit messages
// (10,000 by default) are due and wait for a worker, a new message waits
// until a worker takes one, for at most Config.InFlowDelay (1 s), before
// it is stored and gets its 250, as Postfix's in_flow_delay makes its SMTP
// server wait: the clients are slowed to the pace of delivery and the
// queue stays bounded under a sustained overload, while a burst below the
// limit is taken at once.
//
// # Retention
//
// Messages in dead and in the quarantine queues are kept for inspection,
// then deleted Config.Retention after they came there (default 30 days;
// negative: kept until deleted by hand), each deletion logged at INFO
// ("queue: purged: retention ran out", with id, queue and age). The
// scheduler looks for them when it starts and every hour. Their age is
// counted from Envelope.Moved, which the spool sets on each move between
// queues (from their arrival, or their last attempt when later, for a
// message quarantined as it arrived).
//
// # Bounces
//
// A recipient that fails for good (5xx, or the lifetime ran out) gets a
// multipart/report DSN to the envelope sender, from the null sender and
// Config.BounceFrom (default MAILER-DAEMON@<hostname>), with a
// message/delivery-status part and the original message (or its header for
// RET=HDRS or a large message). NOTIFY is honoured (NEVER: none; SUCCESS: a
// "delivered" DSN), and so are ENVID and ORCPT. Nothing is ever sent to the
// null sender. DSNs are queued like any message and go through the postq
// and delivery rules.
//
// A recipient that asked NOTIFY=DELAY and is still undelivered
// Config.DelayWarning after arrival (default 4 hours) gets a DSN with
// Action: delayed (the header of the message only, and Will-Retry-Until),
// then one every Config.DelayRepeat (default daily) until it is delivered,
// fails or expires. The scheduler wakes the message for it even when no
// attempt is due then; the time of the last one is saved in the envelope
// (Envelope.DelayWarned), so a restart sends none twice for one period.
//
// Those rules see a DSN marked with GeneratedKey: it came from no client,
// so it has no client address and no SPF or DKIM results, and a rule
// judging incoming mail (DMARC above all) must let it pass, or it fails
// our own bounces. Point BounceFrom at the mail domain whose DKIM key a
// postq rule signs with (auth.SignDKIM signs a null-sender message made
// here whose From is in its domain), and DSNs pass DMARC where they
// arrive.
//
// # Transports
//
// Transport is the interface every transport satisfies; the remote SMTP and
// LMTP ones are in package relay. Maildir and Mbox deliver locally, adding
// Return-Path and Delivered-To, and report a delivery only once it is
// durable. A Maildir file's data is made durable by its own fdatasync(2)
// before it gets its name in new/ (linkat(2) of an O_TMPFILE file on
// Linux, a rename from tmp/ elsewhere), and the names given meanwhile by
// one fsync(2) of new/ per round (group commit per maildir); no
// syncfs(2), whose cost grows with every other writer on the filesystem,
// on any store (see Maildir). The link count an O_TMPFILE file gets from
// linkat(2) is in its inode, which the fsync of new/ writes with the
// directory on a journaling filesystem (ext4, XFS: one transaction); on
// ext4 without a journal the inode may reach the disk still unlinked, and
// after a crash e2fsck (which such a filesystem needs at every unclean
// start) gives it back its link. An Mbox append is fsynced, and so is the
// directory of an mbox file it created.
package queue

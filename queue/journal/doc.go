// Package journal is a queue.Store that keeps the queue in an append-only
// journal: segment files of records, written by many writers at once and
// made durable by one fdatasync(2) per group, instead of a file per
// message and renames between queue directories (queue.Spool). It is an
// alternative to the spool on one machine; it also implements what the
// smtp package needs of a queue (Enqueue, SupportsDSN), so that a server
// can accept into it.
//
//	st, err := journal.Open(ctx, journal.Config{Dir: "/var/spool/mta"})
//	...
//	defer st.Close()
//	sch := queue.NewScheduler(st, queue.Config{...})
//
// # Layout
//
// The directory holds a lock file (LockFile) and segment files, <16 hex digits>.seg,
// each Config.SegmentSize bytes (64 MiB by default), written whole and
// synced before the segment is used, by a goroutine that keeps the next
// one ready: appending to it then changes no metadata, and fdatasync
// writes only the data. A new segment is zeros; most are the files of
// compacted segments, reused under a new number (at most 2 are kept
// aside, as <number>.free): a record's header checksum is seeded with its
// segment's number, so the records of a file's earlier use never check in
// its new one. A segment holds records, each a header (type,
// lengths, a sequence number unique in the journal, and CRC-32C checksums
// of the header and of the message) followed by its content:
//
//   - full: a message with its queue and envelope (accepted, added, its
//     body replaced by a rule, or copied forward by compaction);
//   - state: a new envelope and queue, and where the body is (Save,
//     SaveUnsynced, SetAside): a move between queues or an attempt record
//     writes a few hundred bytes, never the message again;
//   - done: the message was removed.
//
// The end of each segment is reserved for state and done records (see
// "Durability", on a full disk).
//
// A record larger than half a segment (a message over 32 MiB with the
// default size) gets a segment of its own, synced with its directory.
//
// Each writer reserves its byte range of the current segment under a
// short lock and writes its record with pwrite, concurrently with the
// others; the first writer waiting for durability runs one fdatasync for
// everything written contiguously so far, and the others wait for it or
// lead the next: group commit, with no goroutine hand-off. A range is
// reported durable only when every range before it in the segment is
// written and synced too, so an acknowledged record never follows a hole.
// The journal never calls syncfs(2), whose cost grows with every other
// writer on the filesystem.
//
// Open reads every segment and rebuilds an index in memory (ID, queue,
// where its envelope and body are); for each ID the record with the
// highest sequence decides. A scan of a segment stops at its first record
// that fails a check (torn by a crash, or damaged), with a warning:
// nothing after it in that segment had been acknowledged. Writing then
// goes on in a new segment. Load reads the envelope from its segment and
// returns a message that reads the body there (no copy).
//
// Compaction (a goroutine) deletes a segment once nothing refers to it
// (no message's envelope or body, no loaded message), keeping a segment
// whose done records still hide an older record of the same message in
// another segment; a sealed segment less than a quarter live has its
// messages copied forward as fresh full records, synced, first. Deletions
// (or renames out of the segments, for reuse) are made durable (a
// directory sync) one after the other, oldest first.
//
// # Durability
//
// Enqueue and Add return only once the message's full record is
// fdatasynced (its segment's file was written whole and synced, with the directory, before
// the segment was used), so a client's 250 means the message survives a
// crash of the process or of the machine, or a power loss, on a disk that
// honours flushes. Save returns once its record is synced likewise. A
// SaveUnsynced record (an attempt about to start) is in the page cache
// when it returns: it survives a crash of the process, and a crash of the
// machine may lose it, the message coming back as it was. Remove writes
// its done record without waiting: a crash of the machine may bring the
// message back, to be delivered again (at least once); an operator's
// delete (queue.Admin.Delete, through RemoveDurably) waits for its sync,
// so a deleted message does not come back. A write or sync that fails
// stops every later change (each returns the error, so the client gets a
// 4xx) until the store is reopened, which reads back what is on disk.
// Config.UnsafeNoSync turns every sync off, for benchmarks only.
//
// A full disk is not such a failure. Segments are written whole before
// use, so the journal goes on storing messages in the rest of the active
// segment and in the one made ready next; when the next segment cannot be
// made, Enqueue and Add return an error (the client gets 4xx), and the
// active segment stays in use for what its reserved room takes. The end of
// every segment is kept from full records (new messages, copies, replaced
// bodies): its last segment/128 bytes (at least 8 KiB; 512 KiB of a 64 MiB
// segment) take only done records, the segment/64 bytes before them (at
// least 16 KiB; 1 MiB) state and done records. A done record is 36 bytes
// and the ID (57 with policy.NewID's IDs, 164 at most): the done room
// alone holds about 9,000 of a 64 MiB segment, 140 of the smallest. So
// while new messages get 4xx, the messages already queued still get their
// attempt and outcome records (a few hundred bytes each) and leave the
// queue, which lets compaction give segments back; attempt records are
// refused first, when the state room is used up, and the done room then
// still holds the done records of the attempts under way: a delivered
// message's done record practically never fails for lack of room. A change
// that does not fit is refused and the message stays where it was (the
// scheduler tries an attempt record or a move again later; a delivered
// message whose done record failed all the same is not delivered again by
// the running scheduler, which retries the removal: see the queue
// package, "Scheduler"; a restart before it lands delivers it again: at
// least once). The reserved room is the active segment's: a store opened
// on a full disk writes nothing until it can make a segment. A message
// whose segment of its own cannot be written is refused, and the file
// removed. Nothing acknowledged is touched, and the next change once
// there is room again makes a segment (a failure is only reported to a
// writer that asked before the attempt; attempts are at most one a
// second).
//
// Open takes an exclusive lock on the directory (flock(2); LockFileEx on
// Windows): one store, one process. On Windows a directory cannot be
// synced, and renames are written through instead.
//
// # Configuration and logging
//
// A Store is configured by the exported fields of Config, passed to Open
// and read once; every field's zero value but Dir's is a documented
// default, and there are no option functions. Config.Events (nil by
// default) is told of each sync round, for metrics (see queue.Events).
// Logging goes to
// Config.Logger (nil means slog.Default()): damaged records found at
// Open (WARN), entries set aside as corrupt, failed writes and syncs, and
// compaction failures (ERROR). There is no other way to set a logger, and
// no package-level state.
package journal

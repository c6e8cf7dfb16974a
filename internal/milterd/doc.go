// Package milterd starts real milter daemons for tests: rspamd in milter
// mode, OpenDKIM and clamav-milter (with a private clamd), each from
// Debian's package, each with a configuration written into a private
// directory, listening on a free port of 127.0.0.1, in the foreground of
// the test's process and stopped at the test's end. Nothing of the system's
// configuration, sockets or services is used, and no daemon reaches the
// system's resolver: DNS goes to a loopback server (internal/dnstest).
//
// A starting function skips the test when the daemon is not installed,
// unless MTAKIT_INTEGRATION=1, where that is a failure. It returns once
// the daemon serves (a log line, the socket accepting), never after a
// fixed sleep.
//
// The daemons, their set-up and what the tests found about them:
//
//   - [Rspamd]: only the proxy worker, milter = yes, self_scan = yes (no
//     normal worker, no controller, no redis), no stock rules: GTUBE is
//     refused by rspamd's core (554 5.7.1 Gtube pattern), a test-only Lua
//     rule gives "soft reject" (451 4.7.1) to a message with
//     [SoftRejectHeader], and milter_headers adds X-Spamd-Result,
//     X-Rspamd-Action, X-Rspamd-Server and X-Rspamd-Queue-Id (the i
//     macro). Its "add header" action sets X-Spam: Yes by a change of the
//     absent field (SMFIR_CHGHEADER index 1), which must add it. As root
//     its workers run as _rspamd. About 1.5 s to start (4-5 s on a
//     loaded machine); the stock configuration takes 10 s more to compile
//     its TLD list, so the one written here lists four names.
//   - [OpenDKIM]: Mode s, v or sv, one key (Domain, Selector, KeyFile),
//     relaxed/relaxed, AuthservID opendkim.test. It resolves through
//     libunbound, whose configuration file (ResolverConfiguration)
//     forwards the root zone to the loopback DNS server with its port
//     (opendkim's Nameservers takes no port). Header values it sends keep
//     the space after the colon and fold with LF-TAB.
//   - [ClamavMilter]: clamd from delegate/testdata/clamav-env.sh (the
//     EICAR-only database), clamav-milter with OnInfected Reject,
//     Quarantine, Blackhole or Accept; it is ready once its probe of clamd
//     succeeded (before that it answers 451).
//
// opendkim and clamav-milter (libmilter) take about 5 s to notice SIGTERM,
// so Stop kills them; rspamd gets SIGTERM.
//
// # Configuration and logging
//
// Each daemon is configured by a struct passed to its starting function
// (RspamdConfig, OpenDKIMConfig, ClamavMilterConfig), each zero field a
// documented default. There is no logger: a daemon's own output is kept
// ([Daemon.Output]) and its tail, with its log file, goes to t.Log when
// the test failed.
//
// This package is for tests only; production code must not import it.
package milterd

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
// This package is for tests only; production code must not import it.
package milterd

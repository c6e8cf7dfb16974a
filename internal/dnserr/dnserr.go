package dnserr

import (
	"context"
	"errors"
	"net"
	"os"
)

// Classify returns err, the error of a lookup of name made under ctx, as a
// plain *net.DNSError (never wrapped, never a typed nil) with
//
//   - IsNotFound set for NXDOMAIN and "no such record" answers, and for
//     nothing else (IsTimeout and IsTemporary then false),
//   - IsTimeout and IsTemporary set for timeouts: a net.Error whose Timeout
//     is true, context.DeadlineExceeded, os.ErrDeadlineExceeded, or ctx
//     past its deadline,
//   - IsTemporary set for every other error: a cancelled context, SERVFAIL,
//     REFUSED, any other rcode or malformed answer (Go's resolver reports
//     REFUSED as a "server misbehaving" error that is not temporary), and
//     errors that are not DNS errors at all (a failing resolver of ours).
//
// Err, Name and Server come from the *net.DNSError in err's chain, if any
// (Name defaults to name); the original error stays reachable through
// errors.Is and errors.As (DNSError.UnwrapErr). A nil err gives nil; a nil
// ctx counts as context.Background().
func Classify(ctx context.Context, name string, err error) error {
	if err == nil {
		return nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	out := &net.DNSError{Err: err.Error(), Name: name, UnwrapErr: err}
	var de *net.DNSError
	if errors.As(err, &de) {
		out.Err, out.Server = de.Err, de.Server
		if de.Name != "" {
			out.Name = de.Name
		}
	}
	var ne net.Error
	switch {
	case de != nil && de.IsNotFound && !de.IsTimeout:
		// An answer: the name or the record does not exist.
		out.IsNotFound = true
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout(),
		errors.Is(ctx.Err(), context.DeadlineExceeded):
		out.IsTimeout, out.IsTemporary = true, true
	default:
		// A cancelled context, SERVFAIL, REFUSED, a malformed answer, or
		// not a DNS error at all.
		out.IsTemporary = true
	}
	return out
}

// IsNotFound reports whether err, classified as Classify does, is an
// answer that the name or record does not exist. A nil err is not.
//
// It asks err directly what Classify would decide, without building the
// classified error.
func IsNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound && !de.IsTimeout
}

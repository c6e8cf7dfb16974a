package auth

import (
	"context"
	"net/mail"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// SenderOwners tells which addresses a login owns beyond the login itself:
// its aliases, addresses granted to it. relay.RecipientTable satisfies it.
// Owns must be safe for concurrent use.
type SenderOwners interface {
	Owns(login string, addr policy.Address) bool
}

// SenderLoginOptions configure CheckSenderLogin and CheckFromLogin. The
// zero value is usable: a user then owns only their login.
type SenderLoginOptions struct {
	// Owners is asked about every address that is not the login itself;
	// nil means none: only the login is owned.
	Owners SenderOwners
}

// owns reports whether login may use addr. The login itself always
// matches: its domain normalized, its local part in any case, a "+"
// subaddress ignored.
func (o SenderLoginOptions) owns(login string, addr policy.Address) bool {
	if l, err := policy.ParseAddress(strings.TrimSpace(login)); err == nil && !l.IsNull() {
		if addr.Domain == l.Domain {
			local := addr.Local
			if i := strings.IndexByte(local, '+'); i > 0 {
				local = local[:i]
			}
			if strings.EqualFold(addr.Local, l.Local) || strings.EqualFold(local, l.Local) {
				return true
			}
		}
	}
	return o.Owners != nil && o.Owners.Owns(login, addr)
}

// CheckSenderLogin returns the mail rule of Postfix's
// reject_sender_login_mismatch: an authenticated client may use as
// envelope sender only an address its login owns (the login itself, or
// one Owners grants); any other gets 553 5.7.1 "Sender address rejected:
// not owned by user". The null sender stays allowed (bounces, and
// delivery reports). A session that has not authenticated is not
// concerned: the rule says Next, and the relay rules decide about it.
func CheckSenderLogin(opts SenderLoginOptions) policy.MailRule {
	return func(_ context.Context, tx *policy.Transaction) policy.Verdict {
		if tx.Conn == nil || !tx.Conn.Authenticated() || tx.From.IsNull() {
			return policy.Next()
		}
		if opts.owns(tx.Conn.AuthUser, tx.From) {
			return policy.Next()
		}
		return notOwned(tx.From, tx.Conn.AuthUser)
	}
}

// CheckFromLogin returns the preq rule that holds the header From of an
// authenticated client's message to the same rule as CheckSenderLogin:
// every address of the From field must be owned by the login, else the
// message is refused with 553 5.7.1. A From field that does not parse is
// refused the same way (its owner cannot be told); a message without From
// is left to other rules. Sessions that have not authenticated are not
// concerned.
func CheckFromLogin(opts SenderLoginOptions) policy.MessageRule {
	return func(_ context.Context, tx *policy.Transaction, m *policy.Message) policy.Verdict {
		if tx.Conn == nil || !tx.Conn.Authenticated() || m == nil || m.Header == nil {
			return policy.Next()
		}
		login := tx.Conn.AuthUser
		for _, v := range m.Header.Values("From") {
			list, err := mail.ParseAddressList(v)
			if err != nil || len(list) == 0 {
				return policy.Deny(553, "5.7.1", "Header From address rejected: cannot parse it").WithErr(err)
			}
			for _, ma := range list {
				a, err := policy.ParseAddress(ma.Address)
				if err != nil || a.IsNull() || !opts.owns(login, a) {
					return policy.Deny(553, "5.7.1", "<"+sanitize(ma.Address)+">: Header From address rejected: not owned by user "+sanitize(login))
				}
			}
		}
		return policy.Next()
	}
}

func notOwned(from policy.Address, login string) policy.Verdict {
	return policy.Deny(553, "5.7.1", from.Path()+": Sender address rejected: not owned by user "+sanitize(login))
}

// sanitize keeps a text for a reply line: printable ASCII only, bounded.
func sanitize(s string) string {
	if len(s) > 256 {
		s = s[:256]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r >= 0x7f {
			return '?'
		}
		return r
	}, s)
}

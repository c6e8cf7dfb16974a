package relay

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/mtakit/mtakit/policy"
)

// TableError reports a bad line of an alias or account file, or a problem
// of the table as a whole (an alias cycle), with the file and line it
// concerns.
type TableError struct {
	Path string // "" when the data did not come from a file
	Line int    // 1-based; 0 when the error is not about one line
	Msg  string
}

func (e *TableError) Error() string {
	switch {
	case e.Path == "" && e.Line == 0:
		return "relay: recipients: " + e.Msg
	case e.Path == "":
		return fmt.Sprintf("relay: recipients line %d: %s", e.Line, e.Msg)
	case e.Line == 0:
		return fmt.Sprintf("relay: %s: %s", e.Path, e.Msg)
	}
	return fmt.Sprintf("relay: %s:%d: %s", e.Path, e.Line, e.Msg)
}

// maxTableLine bounds one line of an alias or account file.
const maxTableLine = 16 << 10

// aliasLine is one alias as read from a file: its key ("local@domain" or
// "@domain" for a catch-all) and its targets, with where it was read.
type aliasLine struct {
	key     string // folded address, or "@domain"
	targets []policy.Address
	path    string
	line    int
}

// parseAliases reads alias lines from r:
//
//	# comment
//	alias@domain: target[, target...]
//	@domain: target            (catch-all of the domain)
//
// The alias ends at the first colon outside a quoted local part; targets
// are separated by commas outside quotes. Every bad line is reported as a
// *TableError, joined with errors.Join; the good lines are returned.
func parseAliases(r io.Reader, path string) ([]aliasLine, error) {
	var out []aliasLine
	first := map[string]int{}
	err := tableLines(r, path, func(n int, line string, bad func(string, ...any)) {
		name, rest, ok := cutUnquoted(line, ':')
		if !ok {
			bad("want alias@domain: target[, target...]")
			return
		}
		key, err := aliasKey(strings.TrimSpace(name))
		if err != nil {
			bad("bad alias %q: %v", strings.TrimSpace(name), err)
			return
		}
		var targets []policy.Address
		ok = true
		for rest != "" {
			var t string
			t, rest, _ = cutUnquoted(rest, ',')
			t = strings.TrimSpace(t)
			if t == "" {
				continue
			}
			a, err := targetAddress(t)
			if err != nil {
				bad("alias %s: bad target %q: %v", key, t, err)
				ok = false
				break
			}
			targets = append(targets, a)
		}
		if !ok {
			return
		}
		if len(targets) == 0 {
			bad("alias %s has no target", key)
			return
		}
		if prev, dup := first[key]; dup {
			bad("duplicate alias %s (first on line %d)", key, prev)
			return
		}
		first[key] = n
		out = append(out, aliasLine{key: key, targets: targets, path: path, line: n})
	})
	return out, err
}

// tableLines calls fn with each line of a table file that is neither blank
// nor a comment ("#"), trimmed, with its number and a function that reports
// it as bad (a *TableError). It returns the reports and any read error
// joined with errors.Join.
func tableLines(r io.Reader, path string, fn func(n int, line string, bad func(format string, args ...any))) error {
	var errs []error
	n := 0
	bad := func(msg string, args ...any) {
		errs = append(errs, &TableError{Path: path, Line: n, Msg: fmt.Sprintf(msg, args...)})
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxTableLine)
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fn(n, line, bad)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			n++
			bad("line longer than %d bytes", maxTableLine)
		} else {
			errs = append(errs, fmt.Errorf("relay: reading %s: %w", orStdin(path), err))
		}
	}
	return errors.Join(errs...)
}

// accountLine is one account as read from a file.
type accountLine struct {
	addr policy.Address
	line int
}

// parseAccounts reads account lines from r: an address per line,
// optionally followed by a colon and anything (a password hash), so that
// the credential file of package auth ("address:bcrypt-hash") serves as
// the list of accounts. Blank lines and lines starting with "#" are
// ignored. Every bad line is reported as a *TableError, joined with
// errors.Join; the good lines are returned.
func parseAccounts(r io.Reader, path string) ([]accountLine, error) {
	var out []accountLine
	err := tableLines(r, path, func(n int, line string, bad func(string, ...any)) {
		name, _, _ := cutUnquoted(line, ':')
		name = strings.TrimSpace(name)
		a, err := targetAddress(name)
		if err != nil {
			bad("bad account %q: %v", name, err)
			return
		}
		out = append(out, accountLine{addr: a, line: n})
	})
	return out, err
}

func orStdin(path string) string {
	if path == "" {
		return "recipients"
	}
	return path
}

// cutUnquoted cuts s around the first sep outside a double-quoted string
// (a backslash escapes the next character inside quotes).
func cutUnquoted(s string, sep byte) (before, after string, found bool) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == sep:
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// targetAddress parses a mailbox of an alias or account file: an address
// with a domain, without angle brackets.
func targetAddress(s string) (policy.Address, error) {
	if strings.ContainsAny(s, "<>") {
		return policy.Address{}, errors.New("angle brackets not allowed")
	}
	a, err := policy.ParseAddress(s)
	if err != nil {
		return policy.Address{}, err
	}
	if a.IsNull() {
		return policy.Address{}, errors.New("empty address")
	}
	if a.Domain == "" {
		return policy.Address{}, errors.New("no domain")
	}
	if a.IsLiteral() {
		return policy.Address{}, errors.New("address literals are not allowed")
	}
	return a, nil
}

// aliasKey parses the left side of an alias line: an address, or
// "@domain" for the catch-all of a domain. It returns the folded key.
func aliasKey(s string) (string, error) {
	if d, ok := strings.CutPrefix(s, "@"); ok {
		if strings.ContainsAny(d, "@:,<>") {
			return "", errors.New("bad catch-all domain")
		}
		n, err := policy.NormalizeDomain(d)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(n, "[") {
			return "", errors.New("address literals are not allowed")
		}
		return "@" + n, nil
	}
	a, err := targetAddress(s)
	if err != nil {
		return "", err
	}
	return foldAddr(a), nil
}

// foldAddr is the key of an address in the table: the local part lower
// case, the domain normalized.
func foldAddr(a policy.Address) string {
	return policy.Address{Local: strings.ToLower(a.Local), Domain: a.Domain}.String()
}

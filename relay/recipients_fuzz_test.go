package relay

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/mtakit/mtakit/policy"
)

func FuzzParseAliases(f *testing.F) {
	for _, s := range []string{
		"family@doe.test: john@doe.test, jane@doe.test\n",
		"# comment\n\n@doe.test: catch@doe.test\n",
		`"a:b"@doe.test: "c,d"@remote.test, x@y.test` + "\n",
		"no colon\n",
		"x@doe.test:\n",
		"x@doe.test: a@b.test\nx@doe.test: c@d.test\n",
		"@[127.0.0.1]: a@b.test\n",
		strings.Repeat("a", maxTableLine+1),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		lines, err := parseAliases(strings.NewReader(in), "aliases")
		seen := map[string]bool{}
		for _, l := range lines {
			if seen[l.key] {
				t.Fatalf("alias %s returned twice", l.key)
			}
			seen[l.key] = true
			if len(l.targets) == 0 {
				t.Fatalf("alias %s without targets", l.key)
			}
			if l.line < 1 || l.path != "aliases" {
				t.Fatalf("bad position %s:%d", l.path, l.line)
			}
			for _, tg := range l.targets {
				if tg.Domain == "" || tg.IsLiteral() {
					t.Fatalf("bad target %q", tg)
				}
				// What we keep prints as an address that parses back.
				back, err := policy.ParseAddress(tg.String())
				if err != nil || !back.Equal(tg) {
					t.Fatalf("target %q does not round-trip: %v", tg, err)
				}
			}
		}
		if err != nil {
			var te *TableError
			if !errors.As(err, &te) {
				t.Fatalf("error without position: %v", err)
			}
			if te.Line < 1 || te.Path != "aliases" || !strings.Contains(err.Error(), "aliases:") {
				t.Fatalf("error does not name the file and line: %v", err)
			}
		}
	})
}

func FuzzParseAccounts(f *testing.F) {
	for _, s := range []string{
		"john@doe.test:$2a$10$hash\n",
		"jane@doe.test\n# c\n\n",
		`"a:b"@doe.test:hash` + "\n",
		"bad line:x\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		lines, err := parseAccounts(strings.NewReader(in), "users")
		for _, l := range lines {
			if l.addr.Domain == "" || l.addr.IsNull() {
				t.Fatalf("bad account %q", l.addr)
			}
		}
		if err != nil {
			var te *TableError
			if !errors.As(err, &te) || te.Line < 1 {
				t.Fatalf("error without line: %v", err)
			}
		}
	})
}

func TestCutUnquoted(t *testing.T) {
	for _, tc := range []struct {
		in, before, after string
		found             bool
	}{
		{"a:b", "a", "b", true},
		{`"a:b"@x:c`, `"a:b"@x`, "c", true},
		{`"a\":b"@x:c`, `"a\":b"@x`, "c", true},
		{`"a:b`, `"a:b`, "", false},
		{"abc", "abc", "", false},
	} {
		b, a, ok := cutUnquoted(tc.in, ':')
		if b != tc.before || a != tc.after || ok != tc.found {
			t.Errorf("cutUnquoted(%q) = %q, %q, %v", tc.in, b, a, ok)
		}
	}
}

// FuzzRecipientTable loads fuzzed alias lines into a table; a table that
// loads must expand every alias without running into a loop.
func FuzzRecipientTable(f *testing.F) {
	for _, s := range []string{
		"a@d.test: b@d.test\nb@d.test: john@d.test, x@r.test\n",
		"a@d.test: b@d.test\nb@d.test: a@d.test\n",
		"@d.test: a@d.test\na@d.test: postmaster@d.test\n",
		"a@d.test: b+x@d.test\nb@d.test: john+y@d.test\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		lines, err := parseAliases(strings.NewReader(in), "")
		if err != nil {
			return
		}
		aliases := map[string][]string{}
		for _, l := range lines {
			for _, tg := range l.targets {
				aliases[l.key] = append(aliases[l.key], tg.String())
			}
		}
		tab, err := NewRecipientTable(RecipientConfig{Domains: []string{"d.test"}, Accounts: []string{"john@d.test"},
			Aliases: aliases, MaxAliasDepth: 1 << 20, MaxExpansion: 1 << 20, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return
		}
		rule := tab.ExpandRule()
		for key := range aliases {
			var a policy.Address
			if d, ok := strings.CutPrefix(key, "@"); ok {
				a = policy.Address{Local: "caught", Domain: d}
			} else {
				a = policy.MustParseAddress(key)
			}
			tx := policy.NewTransaction(nil, "fuzz")
			tx.Rcpts = []policy.Recipient{{Addr: a}}
			if v := rule(t.Context(), tx, nil); v.Kind != policy.KindNext {
				t.Fatalf("%s: %v", key, v)
			}
			for _, r := range tx.Rcpts {
				if kind, _, ok := tab.cur.Load().lookup(r.Addr, true); ok && kind == kindAlias {
					t.Fatalf("%s: %s left unexpanded", key, r.Addr)
				}
			}
		}
	})
}

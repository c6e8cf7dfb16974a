package relay_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mtakit/mtakit/policy"
	"github.com/mtakit/mtakit/policy/policytest"
	"github.com/mtakit/mtakit/relay"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// familyTable is two virtual domains with their own accounts and aliases.
func familyTable(t *testing.T, mod func(*relay.RecipientConfig)) *relay.RecipientTable {
	t.Helper()
	cfg := relay.RecipientConfig{
		Domains:  []string{"doe.test", "Shop.Test."},
		Accounts: []string{"john@doe.test", "Jane@doe.test", "john@shop.test", "outsider@other.test"},
		Aliases: map[string][]string{
			"family@doe.test":  {"john@doe.test", "jane@doe.test"},
			"parents@doe.test": {"family@doe.test", "jane@doe.test"}, // jane twice
			"kids@doe.test":    {"friend@remote.test", "john@doe.test"},
			"sales@shop.test":  {"john@shop.test"},
			"@shop.test":       {"john@shop.test"},
		},
		Logger: quietLog(),
	}
	if mod != nil {
		mod(&cfg)
	}
	tab, err := relay.NewRecipientTable(cfg)
	require.NoError(t, err)
	return tab
}

// tableChain is the table's rules before a relay rule, as a server
// registers them.
func tableChain(tab *relay.RecipientTable) *policy.Chain {
	chain := &policy.Chain{Logger: quietLog()}
	chain.Rcpt("recipients", tab.RcptRule())
	chain.Rcpt("relay", relay.CheckRelay(nil, "doe.test", "shop.test"))
	chain.PreQ("aliases", tab.ExpandRule())
	chain.Delivery("local", tab.DeliveryRule())
	chain.Delivery("out", func(ctx context.Context, tx *policy.Transaction, rcpt policy.Recipient, route *policy.Route) policy.Verdict {
		*route = policy.Route{Transport: "smtp"}
		return policy.Accept()
	})
	return chain
}

func TestRecipientTableRcpt(t *testing.T) {
	chain := tableChain(familyTable(t, nil))
	cases := []struct {
		rcpt     string
		code     int
		enhanced string
	}{
		{"john@doe.test", 0, ""},
		{"JOHN@Doe.Test", 0, ""},
		{"jane@doe.test", 0, ""},
		{"john+lists@doe.test", 0, ""},
		{"John+Lists+more@doe.test", 0, ""},
		{"family@doe.test", 0, ""},
		{"family+x@doe.test", 0, ""},
		{"postmaster@doe.test", 0, ""},
		{"Abuse@shop.test", 0, ""},
		{"postmaster", 0, ""},
		{"anything@shop.test", 0, ""}, // catch-all
		{"nosuchuser-zz9@doe.test", 550, "5.1.1"},
		{"jane@shop.test", 0, ""}, // caught by shop's catch-all
		{"+john@doe.test", 550, "5.1.1"},
		{"outsider@other.test", 554, "5.7.1"}, // not local: the relay rule decides
		{"john@doe.test.evil.test", 554, "5.7.1"},
	}
	for _, tc := range cases {
		t.Run(tc.rcpt, func(t *testing.T) {
			o, err := policytest.Run(context.Background(), chain, policytest.Session{From: "a@example.org", Rcpts: []string{tc.rcpt}})
			require.NoError(t, err)
			r := o.Rcpts[0]
			if tc.code == 0 {
				assert.True(t, r.Accepted(), "%v", r.Reply)
				return
			}
			assert.Equal(t, tc.code, r.Reply.Code, r.Reply.String())
			assert.Equal(t, tc.enhanced, r.Reply.Enhanced)
			if tc.code == 550 {
				assert.Contains(t, r.Reply.Text, "User unknown in virtual mailbox table")
			}
		})
	}
}

func TestRecipientTableExpand(t *testing.T) {
	chain := tableChain(familyTable(t, nil))
	type want struct{ addr, orcpt, transport, target string }
	cases := []struct {
		name  string
		rcpts []string
		want  []want
	}{
		{"account kept, subaddress and case kept, mailbox folded", []string{"John+Tag@doe.test"},
			[]want{{"John+Tag@doe.test", "", "maildir", "john"}}},
		{"alias to two accounts", []string{"family@doe.test"},
			[]want{{"john@doe.test", "rfc822;family@doe.test", "maildir", "john"}, {"jane@doe.test", "rfc822;family@doe.test", "maildir", "jane"}}},
		{"nested alias, duplicate member once", []string{"parents@doe.test"},
			[]want{{"john@doe.test", "rfc822;parents@doe.test", "maildir", "john"}, {"jane@doe.test", "rfc822;parents@doe.test", "maildir", "jane"}}},
		{"alias and its member both given", []string{"john@doe.test", "family@doe.test"},
			[]want{{"john@doe.test", "", "maildir", "john"}, {"jane@doe.test", "rfc822;family@doe.test", "maildir", "jane"}}},
		{"remote target", []string{"kids@doe.test"},
			[]want{{"friend@remote.test", "rfc822;kids@doe.test", "smtp", ""}, {"john@doe.test", "rfc822;kids@doe.test", "maildir", "john"}}},
		{"second domain's account has its own mailbox", []string{"john@shop.test"},
			[]want{{"john@shop.test", "", "maildir", "john@shop.test"}}},
		{"catch-all", []string{"whoever@shop.test"},
			[]want{{"john@shop.test", "rfc822;whoever@shop.test", "maildir", "john@shop.test"}}},
		{"postmaster goes to the domain's first account", []string{"postmaster@shop.test", "abuse@doe.test"},
			[]want{{"john@shop.test", "rfc822;postmaster@shop.test", "maildir", "john@shop.test"}, {"john@doe.test", "rfc822;abuse@doe.test", "maildir", "john"}}},
		{"bare postmaster is the primary domain's", []string{"postmaster"},
			[]want{{"john@doe.test", "rfc822;postmaster", "maildir", "john"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := policytest.Run(context.Background(), chain, policytest.Session{From: "a@example.org", Rcpts: tc.rcpts})
			require.NoError(t, err)
			require.Equal(t, policytest.RanThrough, o.Stopped, o.Final().Reply.String())
			require.Len(t, o.Delivery, len(tc.want))
			for i, w := range tc.want {
				d := o.Delivery[i]
				assert.Equal(t, w.addr, d.Rcpt.Addr.String())
				assert.Equal(t, w.orcpt, d.Rcpt.ORCPT)
				assert.Equal(t, w.transport, d.Route.Transport)
				assert.Equal(t, w.target, d.Route.Target)
			}
		})
	}
}

func TestRecipientTableExpandKeepsNotifyAndORCPT(t *testing.T) {
	tab := familyTable(t, nil)
	tx := policytest.Transaction(policytest.Session{})
	tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress("family@doe.test"), Notify: []string{"FAILURE"}, ORCPT: "rfc822;Family@Doe.Test"}}
	v := tab.ExpandRule()(context.Background(), tx, policytest.Message(t, "Subject: x\r\n\r\nx\r\n"))
	require.Equal(t, policy.KindNext, v.Kind)
	require.Len(t, tx.Rcpts, 2)
	for _, r := range tx.Rcpts {
		assert.Equal(t, []string{"FAILURE"}, r.Notify)
		assert.Equal(t, "rfc822;Family@Doe.Test", r.ORCPT)
	}
}

func TestRecipientTableExpandBounds(t *testing.T) {
	// A chain of aliases a1 -> a2 -> ... -> a6 -> john.
	aliases := map[string][]string{}
	for i := 1; i < 6; i++ {
		aliases["a"+string(rune('0'+i))+"@doe.test"] = []string{"a" + string(rune('0'+i+1)) + "@doe.test"}
	}
	aliases["a6@doe.test"] = []string{"john@doe.test"}
	aliases["many@doe.test"] = []string{"x1@remote.test", "x2@remote.test", "x3@remote.test"}
	tab, err := relay.NewRecipientTable(relay.RecipientConfig{Domains: []string{"doe.test"}, Accounts: []string{"john@doe.test"},
		Aliases: aliases, MaxAliasDepth: 3, MaxExpansion: 2, Logger: quietLog()})
	require.NoError(t, err)
	cases := []struct {
		rcpt     string
		code     int
		enhanced string
	}{
		{"a4@doe.test", 0, ""}, // a4 a5 a6: depth 3
		{"a3@doe.test", 554, "5.4.6"},
		{"many@doe.test", 554, "5.5.3"},
	}
	for _, tc := range cases {
		t.Run(tc.rcpt, func(t *testing.T) {
			tx := policytest.Transaction(policytest.Session{})
			tx.Rcpts = []policy.Recipient{{Addr: policy.MustParseAddress(tc.rcpt)}}
			v := tab.ExpandRule()(context.Background(), tx, policytest.Message(t, "Subject: x\r\n\r\nx\r\n"))
			if tc.code == 0 {
				assert.Equal(t, policy.KindNext, v.Kind, v.String())
				return
			}
			assert.Equal(t, policy.KindDeny, v.Kind)
			assert.Equal(t, tc.code, v.Reply.Code)
			assert.Equal(t, tc.enhanced, v.Reply.Enhanced)
		})
	}
}

func TestRecipientTableDeliveryOfUnexpandedAndRemoved(t *testing.T) {
	tab := familyTable(t, nil)
	rule := tab.DeliveryRule()
	tx := policytest.Transaction(policytest.Session{})
	var route policy.Route
	v := rule(context.Background(), tx, policytest.Recipient("family@doe.test"), &route)
	assert.Equal(t, 451, v.Reply.Code, "an alias that was not expanded is deferred, never lost")
	assert.Error(t, v.Err)
	v = rule(context.Background(), tx, policytest.Recipient("gone@doe.test"), &route)
	assert.Equal(t, 550, v.Reply.Code)
	assert.Equal(t, "5.1.1", v.Reply.Enhanced)
	v = rule(context.Background(), tx, policytest.Recipient("x@remote.test"), &route)
	assert.Equal(t, policy.KindNext, v.Kind)
}

func TestRecipientTableLoadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	cases := []struct {
		name    string
		aliases string
		cfg     relay.RecipientConfig
		want    []string
	}{
		{"cycle", "a@doe.test: b@doe.test\nb@doe.test: c@doe.test\nc@doe.test: a@doe.test\n", relay.RecipientConfig{},
			[]string{"aliases:1:", "alias loop: a@doe.test -> b@doe.test -> c@doe.test -> a@doe.test"}},
		{"self", "# me\n\nme@doe.test: me@doe.test\n", relay.RecipientConfig{}, []string{"aliases:3:", "alias loop"}},
		{"cycle through a subaddress", "a@doe.test: b+x@doe.test\nb@doe.test: a@doe.test\n", relay.RecipientConfig{}, []string{"alias loop"}},
		{"cycle through postmaster", "team@doe.test: postmaster@doe.test\n", relay.RecipientConfig{Postmaster: "team@doe.test"}, []string{"alias loop"}},
		{"bad line", "ok@doe.test: john@doe.test\nno colon here\n", relay.RecipientConfig{}, []string{"aliases:2:", "want alias@domain"}},
		{"bad target", "x@doe.test: john@doe.test, not an address\n", relay.RecipientConfig{}, []string{"aliases:1:", "bad target"}},
		{"no target", "x@doe.test:  \n", relay.RecipientConfig{}, []string{"aliases:1:", "no target"}},
		{"duplicate", "x@doe.test: john@doe.test\nX@Doe.Test: john@doe.test\n", relay.RecipientConfig{}, []string{"aliases:2:", "duplicate alias", "line 1"}},
		{"not local", "x@other.test: john@doe.test\n", relay.RecipientConfig{}, []string{"aliases:1:", "not in a local domain"}},
		{"unknown local target", "x@doe.test: nobody@doe.test\n", relay.RecipientConfig{}, []string{"aliases:1:", "neither an account nor an alias"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Domains = []string{"doe.test"}
			cfg.Accounts = []string{"john@doe.test"}
			cfg.AliasFile = write("aliases", tc.aliases)
			cfg.Logger = quietLog()
			_, err := relay.NewRecipientTable(cfg)
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
			var te *relay.TableError
			assert.True(t, errors.As(err, &te))
		})
	}
	_, err := relay.NewRecipientTable(relay.RecipientConfig{Domains: []string{"doe.test"}, AccountFile: filepath.Join(dir, "missing")})
	assert.Error(t, err)
	_, err = relay.NewRecipientTable(relay.RecipientConfig{})
	assert.Error(t, err)
}

func TestRecipientTableAccountFile(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	// The credential file of package auth, as is.
	require.NoError(t, os.WriteFile(users, []byte("# users\njohn@doe.test:$2a$10$abcdefghijklmnopqrstuuSomeHashValueHereXXXXXXXXXXXXXXX\n\"odd:name\"@doe.test:$2a$10$x\n"), 0o600))
	tab, err := relay.NewRecipientTable(relay.RecipientConfig{Domains: []string{"doe.test"}, AccountFile: users, Logger: quietLog()})
	require.NoError(t, err)
	assert.True(t, tab.Has(policy.MustParseAddress("john@doe.test")))
	assert.True(t, tab.Has(policy.MustParseAddress(`"odd:name"@doe.test`)))
	assert.False(t, tab.Has(policy.MustParseAddress("jane@doe.test")))

	require.NoError(t, os.WriteFile(users, []byte("john@doe.test:x\nthis is not an address:x\n"), 0o600))
	err = tab.Reload()
	require.Error(t, err)
	assert.Contains(t, err.Error(), users+":2:")
	assert.True(t, tab.Has(policy.MustParseAddress(`"odd:name"@doe.test`)), "a failed reload keeps the table in force")
}

func TestRecipientTableNoAccounts(t *testing.T) {
	tab, err := relay.NewRecipientTable(relay.RecipientConfig{Domains: []string{"doe.test"},
		Aliases: map[string][]string{"list@doe.test": {"a@remote.test"}}, Logger: quietLog()})
	require.NoError(t, err)
	box, ok := tab.Mailbox(policy.MustParseAddress("postmaster@doe.test"))
	assert.True(t, ok, "without any account postmaster has a mailbox of its own")
	assert.Equal(t, "postmaster", box)
	assert.True(t, tab.Has(policy.MustParseAddress("abuse@doe.test")))
}

func TestRecipientTableOwns(t *testing.T) {
	tab := familyTable(t, func(c *relay.RecipientConfig) {
		c.Senders = map[string][]string{"webmaster@doe.test": {"jane@doe.test"}}
	})
	cases := []struct {
		login, addr string
		want        bool
	}{
		{"john@doe.test", "john@doe.test", true},
		{"john@doe.test", "John@DOE.test", true},
		{"john@doe.test", "john+news@doe.test", true},
		{"john@doe.test", "family@doe.test", true},  // alias leading to john
		{"john@doe.test", "parents@doe.test", true}, // through family
		{"jane@doe.test", "family+x@doe.test", true},
		{"john@doe.test", "jane@doe.test", false},
		{"john@doe.test", "sales@shop.test", false},
		{"john@shop.test", "sales@shop.test", true},
		{"john@shop.test", "anything@shop.test", false}, // a catch-all grants nothing
		{"john@doe.test", "postmaster@doe.test", false},
		{"jane@doe.test", "webmaster@doe.test", true}, // granted
		{"john@doe.test", "webmaster@doe.test", false},
		{"john@doe.test", "ceo@bank.test", false},
		{"outsider@other.test", "outsider@other.test", true},
		{"", "john@doe.test", false},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, tab.Owns(tc.login, policy.MustParseAddress(tc.addr)), "%s owns %s", tc.login, tc.addr)
	}
	assert.False(t, tab.Owns("john@doe.test", policy.Address{}))
}

func TestRecipientTableSeparator(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*relay.RecipientConfig)
		addr string
		want bool
	}{
		{"default plus", nil, "john+x@doe.test", true},
		{"default is not minus", nil, "john-x@doe.test", false},
		{"minus configured", func(c *relay.RecipientConfig) { c.Separator = "-+" }, "john-x@doe.test", true},
		{"both configured", func(c *relay.RecipientConfig) { c.Separator = "-+" }, "john+x@doe.test", true},
		{"off", func(c *relay.RecipientConfig) { c.NoSubaddress = true }, "john+x@doe.test", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, err := relay.NewRecipientTable(relay.RecipientConfig{Domains: []string{"doe.test"}, Accounts: []string{"john@doe.test"}, Logger: quietLog()})
			if tc.mod != nil {
				cfg := relay.RecipientConfig{Domains: []string{"doe.test"}, Accounts: []string{"john@doe.test"}, Logger: quietLog()}
				tc.mod(&cfg)
				tab, err = relay.NewRecipientTable(cfg)
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, tab.Has(policy.MustParseAddress(tc.addr)))
		})
	}
}

func TestRecipientTableWatch(t *testing.T) {
	dir := t.TempDir()
	aliases := filepath.Join(dir, "aliases")
	require.NoError(t, os.WriteFile(aliases, []byte("family@doe.test: john@doe.test\n"), 0o600))
	logs := &syncBuffer{}
	tab, err := relay.NewRecipientTable(relay.RecipientConfig{Domains: []string{"doe.test"}, Accounts: []string{"john@doe.test", "jane@doe.test"},
		AliasFile: aliases, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tab.Watch(ctx, 5*time.Millisecond) }()
	defer func() { cancel(); require.NoError(t, <-done) }()

	team := policy.MustParseAddress("team@doe.test")
	require.False(t, tab.Has(team))
	require.NoError(t, os.WriteFile(aliases, []byte("family@doe.test: john@doe.test\nteam@doe.test: jane@doe.test, john@doe.test\n"), 0o600))
	require.Eventually(t, func() bool { return tab.Has(team) }, 10*time.Second, 5*time.Millisecond)

	// A broken file keeps the table in force.
	require.NoError(t, os.WriteFile(aliases, []byte("team@doe.test: team@doe.test\n"+strings.Repeat("#", 100)+"\n"), 0o600))
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "reload failed") }, 10*time.Second, 5*time.Millisecond)
	assert.Contains(t, logs.String(), aliases+":1: alias loop")
	assert.True(t, tab.Has(team))
	assert.True(t, tab.Has(policy.MustParseAddress("family@doe.test")))
	assert.Error(t, tab.Watch(ctx, 0))
}

func TestRecipientTableCopiesConfig(t *testing.T) {
	aliases := map[string][]string{"family@doe.test": {"john@doe.test"}}
	tab, err := relay.NewRecipientTable(relay.RecipientConfig{Domains: []string{"doe.test"}, Accounts: []string{"john@doe.test"}, Aliases: aliases, Logger: quietLog()})
	require.NoError(t, err)
	aliases["team@doe.test"] = []string{"john@doe.test"}
	require.NoError(t, tab.Reload())
	assert.False(t, tab.Has(policy.MustParseAddress("team@doe.test")), "the table copied its config")
}

package milterd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtakit/mtakit/internal/dnstest"
)

// SoftRejectHeader is a header field that makes the rspamd started by
// [Rspamd] answer with its "soft reject" action (a milter tempfail, 4xx)
// when its value is "soft-reject": a test-only Lua rule, since no stock
// rule gives that action for a message a test can write.
const SoftRejectHeader = "X-Mtakit-Test"

// SoftRejectMessage is the text rspamd gives with that soft reject.
const SoftRejectMessage = "Try again later (mtakit test)"

// GTUBE is the Generic Test for Unsolicited Bulk Email: rspamd rejects a
// message whose body contains it.
const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// GTUBEAddHeader is rspamd's test pattern for its "add header" action
// (enabled by enable_test_patterns in the configuration written here).
const GTUBEAddHeader = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// RspamdConfig configures [Rspamd]. The zero value is usable.
type RspamdConfig struct {
	// DNS is the "127.0.0.1:port" of the DNS server rspamd asks. Empty:
	// a loopback server without records is started, so that rspamd
	// never reaches the system's resolver.
	DNS string
	// Extra is UCL configuration appended to the top level (for
	// example `actions { reject = 10; }`).
	Extra string
}

// rspamdConf is the whole configuration: rspamd's proxy worker in milter
// mode scanning by itself (self_scan: no normal worker, no controller, no
// redis), no stock rules or modules but milter_headers, which adds
// X-Spamd-Result, X-Rspamd-Server, X-Rspamd-Queue-Id and X-Rspamd-Action
// (also to local and authenticated mail, which it skips by default). GTUBE is
// recognised by rspamd's core. The TLD list is cut to a few names: the
// stock one (effective_tld_names.dat) costs ten seconds to compile at
// every start.
const rspamdConf = `# Written by internal/milterd for one test.
lua = "{{dir}}/test.lua";
modules { path = "${PLUGINSDIR}"; }
options {
    pidfile = "{{dir}}/rspamd.pid";
    filters = "";
    url_tld = "{{dir}}/tld.dat";
    cache_file = "{{dir}}/symbols.cache";
    hs_cache_dir = "{{dir}}";
    control_socket = "{{dir}}/rspamd.sock mode=0600";
    tempdir = "{{dir}}";
    enable_test_patterns = true;
    dns { nameserver = ["{{dns}}"]; timeout = 1s; retransmits = 1; }
}
logging { type = "console"; level = "info"; color = false; }
actions { reject = 15; add_header = 6; }
milter_headers {
    use = [];
    extended_spam_headers = true;
    # The tests' SMTP clients come from 127.0.0.1, which rspamd counts as
    # local: by default it adds no headers to local or authenticated mail.
    skip_local = false;
    skip_authenticated = false;
}
worker "rspamd_proxy" {
    bind_socket = "{{listen}}";
    milter = yes;
    timeout = 120s;
    upstream "local" { default = yes; self_scan = yes; }
    count = 1;
}
`

const rspamdLua = `-- Written by internal/milterd: a test-only rule giving the "soft reject"
-- action to a message with the header field ` + SoftRejectHeader + `: soft-reject.
rspamd_config:register_symbol({
  name = 'MTAKIT_TEST_SOFT_REJECT',
  score = 0.0,
  callback = function(task)
    local h = task:get_header('` + SoftRejectHeader + `')
    if h and h == 'soft-reject' then
      task:set_pre_result('soft reject', '` + SoftRejectMessage + `', 'mtakit')
      return true
    end
    return false
  end,
})
`

// Rspamd starts rspamd (Debian package rspamd) with only its proxy worker
// in milter mode on a free port of 127.0.0.1, and stops it at the end of
// the test. It skips the test when rspamd is not installed, unless
// MTAKIT_INTEGRATION=1. Start-up takes about 1.5 s.
//
// As root, rspamd's workers run as _rspamd (-u/-g; its directory is given
// to that user); as another user, as that user.
func Rspamd(tb testing.TB, cfg RspamdConfig) *Daemon {
	tb.Helper()
	bin := requireTool(tb, "rspamd", "rspamd")
	if cfg.DNS == "" {
		cfg.DNS = dnstest.New(tb).Addr()
	}
	d := start(tb, "rspamd", func() (*Daemon, error) { return startRspamd(tb, bin, cfg) })
	logOnFailure(tb, d)
	return d
}

func startRspamd(tb testing.TB, bin string, cfg RspamdConfig) (*Daemon, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := &Daemon{Name: "rspamd", Network: "tcp", Address: fmt.Sprintf("127.0.0.1:%d", port), Dir: privateDir(tb, "rspamd")}
	conf := strings.NewReplacer("{{dir}}", d.Dir, "{{dns}}", cfg.DNS, "{{listen}}", d.Address).Replace(rspamdConf) + cfg.Extra + "\n"
	files := map[string]string{
		"rspamd.conf": conf,
		"test.lua":    rspamdLua,
		"tld.dat":     "com\nnet\norg\nexample\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(d.Dir, name), []byte(content), 0o644); err != nil {
			d.Stop()
			return nil, err
		}
	}
	argv := []string{bin, "-f", "-c", filepath.Join(d.Dir, "rspamd.conf")}
	if runningAsRoot() {
		// rspamd refuses to run its workers as root.
		if uid, gid, err := lookupIDs("_rspamd"); err == nil {
			if err := chownTree(d.Dir, uid, gid); err != nil {
				d.Stop()
				return nil, err
			}
			argv = append(argv, "-u", "_rspamd", "-g", "_rspamd")
		} else {
			argv = append(argv, "--insecure")
		}
	}
	err = d.start(argv, nil, func(ctx context.Context) error {
		// The main process binds the socket, then forks the proxy
		// worker, which logs this when it begins to serve.
		out, err := d.out.waitFor(ctx, "starting rspamd_proxy process", "cannot listen", "cannot bind", "Address already in use")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "starting rspamd_proxy process") {
			return fmt.Errorf("%w: %s", errPortTaken, tail(out, 5))
		}
		return waitAccept(ctx, d.Address)
	})
	if err != nil {
		if strings.Contains(d.out.String(), "Address already in use") {
			err = fmt.Errorf("%w: %v", errPortTaken, err)
		}
		d.Stop()
		return nil, fmt.Errorf("%w\n%s", err, tail(d.out.String(), 30))
	}
	return d, nil
}

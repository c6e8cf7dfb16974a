package archtest

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const module = "github.com/mtakit/mtakit"

// allowed lists, for each package, the packages of this module it may
// import (directly or not), besides the leaves of everywhere. Test-only and
// internal test helpers are not counted: go list -deps without -test sees
// production code only.
var allowed = map[string][]string{
	"internal/lazyctx":  {},
	"internal/dnserr":   {},
	"internal/idlock":   {},
	"internal/msgsrc":   {},
	"internal/xtext":    {},
	"policy":            {},
	"policy/policytest": {"policy"},
	"policy/dnscache":   {"policy"},
	"auth":              {"policy"},
	"relay":             {"policy"},
	"delegate":          {"policy"},
	"queue":             {"policy"},
	"smtp":              {"policy", "queue"},
	// The JetStream store is a queue.Store beside the spool; the
	// conformance suite runs any store through the queue package.
	"queue/jetstream": {"policy", "queue"},
	"queue/queuetest": {"policy", "queue"},
	// The journal store is a queue.Store beside the spool, on the local
	// filesystem (issue 21).
	"queue/journal": {"policy", "queue"},
	// The metrics are fed through event interfaces that smtp and queue
	// declare: it imports neither, and neither imports it.
	"policy/metrics": {"policy"},
	// The admin API and its web console work on the queue (admin.Queue);
	// the console's recorder is fed through the event interfaces, like
	// policy/metrics, without importing smtp.
	"queue/admin":         {"policy", "queue"},
	"queue/admin/console": {"policy", "queue", "queue/admin"},
	// The JetStream key-value buckets for shared state satisfy interfaces
	// that relay and auth declare, without importing them.
	"queue/jetstream/kv": {},
	// The module's root package assembles a whole server (mtakit.Server):
	// it is the one place that wires smtp to queue.
	".": {"policy", "queue", "smtp"},
	// The milter client is rules: policy only (its tests run it through
	// a real smtp.Server, which tests may import).
	"delegate/milter": {"policy"},
	// Test support (real milter daemons): the loopback DNS server only;
	// no production package may import it (none lists it).
	"internal/milterd": {"internal/dnstest"},
	// Test support (a tmpfs to fill up): no production package may import
	// it (none lists it).
	"internal/diskfull": {},
}

// everywhere lists the internal helpers any package may import: leaves
// that import nothing of ours (checked above like the others).
var everywhere = []string{"internal/lazyctx", "internal/dnserr", "internal/idlock", "internal/msgsrc", "internal/xtext"}

// forbidden lists third-party packages a package must not depend on.
var forbidden = map[string][]string{
	// go-smtp is v0 and changes its API: its types stay inside smtp (and
	// the transports and receivers that speak SMTP), never in policy.
	"policy":            {"github.com/emersion/go-smtp", "github.com/prometheus/"},
	"policy/policytest": {"github.com/emersion/go-smtp"},
	// Prometheus stays in policy/metrics: a server without metrics does
	// not link it.
	"policy/metrics":      {"github.com/emersion/go-smtp"},
	"smtp":                {"github.com/prometheus/", "github.com/nats-io/"},
	"queue/admin/console": {"github.com/prometheus/", "github.com/emersion/go-smtp", "github.com/nats-io/"},
	// NATS stays in queue/jetstream: a server on the spool does not link it.
	"queue":           {"github.com/prometheus/", "github.com/nats-io/"},
	"queue/jetstream": {"github.com/prometheus/"},
	"queue/journal":   {"github.com/prometheus/", "github.com/nats-io/", "github.com/emersion/go-smtp"},
	".":               {"github.com/prometheus/", "github.com/nats-io/"},
}

// natsFree lists packages that must not link NATS: a server on the
// filesystem spool does not carry a JetStream client. Shared state and
// the JetStream queue live under queue/jetstream.
var natsFree = []string{"policy", "smtp", "queue", "queue/journal", "relay", "auth", "."}

func TestImportGraph(t *testing.T) {
	for pkg, ok := range allowed {
		t.Run(pkg, func(t *testing.T) {
			path := module + "/" + pkg
			if pkg == "." {
				path = module
			}
			out, err := exec.Command("go", "list", "-deps", "-json", path).Output()
			require.NoError(t, err)
			dec := json.NewDecoder(strings.NewReader(string(out)))
			for dec.More() {
				var p struct{ ImportPath string }
				require.NoError(t, dec.Decode(&p))
				if rest, ours := strings.CutPrefix(p.ImportPath, module+"/"); ours && rest != pkg && !(pkg == "." && p.ImportPath == module) {
					assert.Contains(t, append(ok, everywhere...), rest, "%s must not import %s", pkg, p.ImportPath)
				}
				if slices.Contains(natsFree, pkg) {
					assert.False(t, strings.HasPrefix(p.ImportPath, "github.com/nats-io/"), "%s must not depend on %s", pkg, p.ImportPath)
				}
				for _, bad := range forbidden[pkg] {
					assert.False(t, strings.HasPrefix(p.ImportPath, bad), "%s must not depend on %s", pkg, p.ImportPath)
				}
			}
		})
	}
}

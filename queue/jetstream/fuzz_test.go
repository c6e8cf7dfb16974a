package jetstream

import (
	"testing"

	"github.com/mtakit/mtakit/queue"
)

// FuzzSubject: every envelope subject parses back to its ID and queue,
// and parsing any subject never panics.
func FuzzSubject(f *testing.F) {
	f.Add("1a2b.c_d-e", "virus.v2")
	f.Add("x", "")
	f.Add("~a", "a~b")
	f.Fuzz(func(t *testing.T, id, name string) {
		s := &Store{prefix: "mtaq."}
		s.parseSubject("mtaq.env." + id + "." + name) // must not panic
		if !queue.ValidID(id) || name != "" && !queue.ValidID(name) {
			return
		}
		q := queue.Hold
		if name != "" {
			q = queue.QuarantinePrefix + name
		}
		subj, err := s.envSubject(id, q)
		if err != nil {
			t.Fatalf("envSubject(%q, %q): %v", id, q, err)
		}
		gid, gq, ok := s.parseSubject(subj)
		if !ok || gid != id || gq != q {
			t.Fatalf("%q parsed as %q %q %v, want %q %q", subj, gid, gq, ok, id, q)
		}
	})
}

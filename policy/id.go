package policy

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"time"
)

// idEncoding is base32hex in lower case: its alphabet is in ASCII order,
// so IDs sort as the times they start with.
var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// NewID returns a new identifier for a connection, a transaction or a
// queue entry: unique, safe as a file name, and sorting by creation time
// (8 bytes of Unix nanoseconds, then 5 random bytes, in 21 characters of
// lower-case base32hex).
func NewID() string {
	var b [13]byte
	binary.BigEndian.PutUint64(b[:8], uint64(time.Now().UnixNano()))
	rand.Read(b[8:])
	return idEncoding.EncodeToString(b[:])
}

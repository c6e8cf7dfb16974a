package smtp

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"time"
)

var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// newID returns a unique identifier, safe as a file name, that sorts by
// creation time: 8 bytes of Unix nanoseconds and 5 random bytes, in
// lower-case base32hex (21 characters).
func newID() string {
	var b [13]byte
	binary.BigEndian.PutUint64(b[:8], uint64(time.Now().UnixNano()))
	rand.Read(b[8:])
	return idEncoding.EncodeToString(b[:])
}

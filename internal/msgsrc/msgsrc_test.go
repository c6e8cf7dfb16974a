package msgsrc

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSrc(t *testing.T) {
	// The file holds junk, then the stored message "H: 1\r\n\r\nbody\r\n".
	file := strings.NewReader("xxxxH: 1\r\n\r\nbody\r\n")
	for _, tc := range []struct {
		name string
		src  Src
		want string
	}{
		{"as stored", Src{File: file, Off: 4, Stored: 14}, "H: 1\r\n\r\nbody\r\n"},
		{"header rewritten", Src{Head: []byte("H: 2\r\nX: y\r\n"), Base: 6, File: file, Off: 4, Stored: 14}, "H: 2\r\nX: y\r\n\r\nbody\r\n"},
		{"empty head", Src{Head: []byte{}, Base: 8, File: file, Off: 4, Stored: 14}, "body\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.src
			assert.Equal(t, int64(len(tc.want)), src.Size())
			// Every offset and length, through the reads' edges.
			for off := 0; off <= len(tc.want); off++ {
				for n := 0; n <= len(tc.want)-off+2; n++ {
					p := make([]byte, n)
					got, err := src.ReadAt(p, int64(off))
					want := tc.want[off:min(off+n, len(tc.want))]
					assert.Equal(t, want, string(p[:got]), "off %d n %d", off, n)
					if got < n {
						assert.ErrorIs(t, err, io.EOF, "a short read says EOF (off %d n %d)", off, n)
					}
				}
			}
			require.NoError(t, iotest.TestReader(io.NewSectionReader(&src, 0, src.Size()), []byte(tc.want)))
			_, err := src.ReadAt(make([]byte, 1), -1)
			assert.Error(t, err)
		})
	}
}

func TestInStored(t *testing.T) {
	src := Src{Head: []byte("H: 2\r\n"), Base: 6, Stored: 14}
	_, ok := src.InStored(5)
	assert.False(t, ok, "in the rewritten head")
	at, ok := src.InStored(6)
	assert.True(t, ok)
	assert.Equal(t, int64(6), at)
	at, ok = (&Src{Stored: 14}).InStored(3)
	assert.True(t, ok)
	assert.Equal(t, int64(3), at)
}

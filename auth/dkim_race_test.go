//go:build race

package auth

// largeMessageMiB is smaller under the race detector, which slows the
// byte-wise canonicalization down tenfold; the streaming property is the
// same.
const largeMessageMiB = 12

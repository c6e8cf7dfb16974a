//go:build race

package auth

// largeMessageMiB is smaller under the race detector, which slows the
// byte-wise canonicalization down tenfold; the streaming property is the
// same.
const largeMessageMiB = 12

// raceEnabled: sync.Pool drops items at random under the race detector,
// so allocation counts mean nothing there.
const raceEnabled = true

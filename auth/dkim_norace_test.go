//go:build !race

package auth

// largeMessageMiB is the size of the message TestSignDKIMLargeMessageStreams
// signs.
const largeMessageMiB = 50

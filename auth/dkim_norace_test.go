//go:build !race

package auth

// largeMessageMiB is the size of the message TestSignDKIMLargeMessageStreams
// signs.
const largeMessageMiB = 50

// raceEnabled: see dkim_race_test.go.
const raceEnabled = false

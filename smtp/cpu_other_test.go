//go:build !unix

package smtp

import "time"

// processCPU: no getrusage(2) here; the benchmarks report no CPU time.
func processCPU() time.Duration { return 0 }

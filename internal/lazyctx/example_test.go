package lazyctx_test

import (
	"context"
	"fmt"
	"time"

	"github.com/mtakit/mtakit/internal/lazyctx"
)

func ExampleWithTimeout() {
	// A bound on work that may never wait on anything: no timer runs
	// unless the work calls Done (or Value), or runs out of time.
	ctx, cancel := lazyctx.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, ok := ctx.Deadline()
	fmt.Println(ok, ctx.Err())
	cancel()
	fmt.Println(ctx.Err())
	<-ctx.Done()
	// Output:
	// true <nil>
	// context canceled
}

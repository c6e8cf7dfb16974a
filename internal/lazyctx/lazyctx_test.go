package lazyctx

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// closed reports whether ch is closed, waiting up to wait for it.
func closed(ch <-chan struct{}, wait time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(wait):
		return false
	}
}

type key struct{}

func TestEnds(t *testing.T) {
	errParent := errors.New("parent went away")
	tests := []struct {
		name string
		// end makes ctx (made with a 50 ms timeout of parent) end;
		// waitFirst calls Done before, so that the timer runs.
		end       func(ctx context.Context, cancel, cancelParent func())
		waitFirst bool
		wantErr   error
		wantCause error
	}{
		{"cancel, never waited on", func(_ context.Context, cancel, _ func()) { cancel() }, false, context.Canceled, context.Canceled},
		{"cancel while waited on", func(_ context.Context, cancel, _ func()) { cancel() }, true, context.Canceled, context.Canceled},
		{"deadline, never waited on", func(context.Context, func(), func()) { time.Sleep(60 * time.Millisecond) }, false, context.DeadlineExceeded, context.DeadlineExceeded},
		{"deadline while waited on", func(ctx context.Context, _, _ func()) { <-ctx.Done() }, true, context.DeadlineExceeded, context.DeadlineExceeded},
		{"parent canceled, never waited on", func(_ context.Context, _, cancelParent func()) { cancelParent() }, false, context.Canceled, errParent},
		{"parent canceled while waited on", func(_ context.Context, _, cancelParent func()) { cancelParent() }, true, context.Canceled, errParent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parent, cancelParent := context.WithCancelCause(context.WithValue(context.Background(), key{}, "v"))
			defer cancelParent(nil)
			ctx, cancel := WithTimeout(parent, 50*time.Millisecond)
			defer cancel()
			require.NoError(t, ctx.Err())
			assert.Equal(t, "v", ctx.Value(key{}))
			if tc.waitFirst {
				require.False(t, closed(ctx.Done(), 0))
			}
			tc.end(ctx, cancel, func() { cancelParent(errParent) })
			require.ErrorIs(t, ctx.Err(), tc.wantErr)
			assert.True(t, closed(ctx.Done(), time.Second), "Done must close once Err is set")
			assert.ErrorIs(t, context.Cause(ctx), tc.wantCause)
			// Err never changes once set, whatever comes next.
			cancel()
			cancelParent(errors.New("later"))
			time.Sleep(60 * time.Millisecond)
			assert.ErrorIs(t, ctx.Err(), tc.wantErr)
			assert.ErrorIs(t, context.Cause(ctx), tc.wantCause)
		})
	}
}

func TestDeadline(t *testing.T) {
	early := time.Now().Add(time.Minute)
	parent, cancel := context.WithDeadline(context.Background(), early)
	defer cancel()
	for _, tc := range []struct {
		name string
		d    time.Time
		want time.Time
	}{
		{"own deadline first", early.Add(-time.Second), early.Add(-time.Second)},
		{"parent's first", early.Add(time.Hour), early},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := WithDeadline(parent, tc.d)
			defer cancel()
			got, ok := ctx.Deadline()
			assert.True(t, ok)
			assert.True(t, got.Equal(tc.want), "got %v, want %v", got, tc.want)
		})
	}
}

func TestChildrenFollow(t *testing.T) {
	ctx, cancel := WithTimeout(context.Background(), time.Hour)
	child, cancelChild := context.WithCancel(ctx)
	defer cancelChild()
	stopped := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { close(stopped) })
	defer stop()
	cancel()
	assert.True(t, closed(child.Done(), time.Second))
	assert.ErrorIs(t, child.Err(), context.Canceled)
	assert.True(t, closed(stopped, time.Second), "AfterFunc must run")
}

// TestConcurrent is for -race: Done, Err, Value and cancel from several
// goroutines agree.
func TestConcurrent(t *testing.T) {
	for range 50 {
		ctx, cancel := WithTimeout(context.Background(), time.Millisecond)
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch i {
				case 0:
					<-ctx.Done()
				case 1:
					cancel()
				case 2:
					ctx.Value(key{})
				}
				for ctx.Err() == nil {
					time.Sleep(100 * time.Microsecond)
				}
				errs[i] = ctx.Err()
			}()
		}
		wg.Wait()
		for _, err := range errs[1:] {
			require.Equal(t, errs[0], err)
		}
		require.True(t, closed(ctx.Done(), time.Second))
	}
}

func Benchmark(b *testing.B) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.Run("context.WithTimeout", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, cancel := context.WithTimeout(parent, time.Minute)
			cancel()
		}
	})
	b.Run("lazyctx.WithTimeout", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ctx, cancel := WithTimeout(parent, time.Minute)
			_ = ctx.Err()
			cancel()
		}
	})
}

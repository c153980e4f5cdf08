package supervisor

import (
	"os"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestNiceOfReadsTheNiceValue checks the conversion of getpriority(2)'s answer (20 - nice) on a
// thread of this process lowered by setpriority(2).
func TestNiceOfReadsTheNiceValue(t *testing.T) {
	done := make(chan int)
	release := make(chan struct{})
	go func() {
		// A thread of its own, which ends lowered (the runtime does not reuse a locked thread).
		runtime.LockOSThread()
		tid := unix.Gettid()
		require.NoError(t, unix.Setpriority(unix.PRIO_PROCESS, tid, 7))
		done <- tid
		<-release
		unix.Setpriority(unix.PRIO_PROCESS, tid, 0) // back, if the test may (a locked thread that ends is not reused anyway)
	}()
	tid := <-done
	defer close(release)
	nice, err := niceOf(tid)
	require.NoError(t, err)
	assert.Equal(t, 7, nice)
	tids, err := threadsOf(os.Getpid())
	require.NoError(t, err)
	assert.Contains(t, tids, tid)
	others := 0
	for _, other := range tids {
		if n, err := niceOf(other); err == nil && other != tid && n != 7 {
			others++
		}
	}
	assert.NotZero(t, others, "the nice value is the thread's, not the process's")
}

// TestCanUndoNiceAsRoot: root has CAP_SYS_NICE (unless the test runs without it).
func TestCanUndoNiceAsRoot(t *testing.T) {
	if !effectiveCap(unix.CAP_SYS_NICE) {
		t.Skip("no CAP_SYS_NICE here")
	}
	ok, why := canUndoNice()
	assert.True(t, ok, why)
}

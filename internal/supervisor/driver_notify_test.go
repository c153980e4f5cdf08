package supervisor

import (
	"testing"
	"time"
)

// TestStrangersPace: readers that take a flood from strangers are held to paceRate datagrams a
// second once the burst is spent.
func TestStrangersPace(t *testing.T) {
	b := tokenBucket{rate: paceRate, burst: paceBurst, tokens: paceBurst}
	now := time.Unix(1000, 0)
	for i := range paceBurst {
		if wait := b.take(now); wait != 0 {
			t.Fatalf("drop %d of the burst waits %v", i, wait)
		}
	}
	// Past the burst, each drop is due 1/paceRate after the one before, counted from now.
	step := time.Second / paceRate
	for i := 1; i <= 3; i++ {
		if wait := b.take(now); !about(wait, time.Duration(i)*step) {
			t.Fatalf("drop %d past the burst waits %v, want %v", i, wait, time.Duration(i)*step)
		}
	}
	// Time pays the debt back, and a second later the bucket has a second's worth again.
	later := now.Add(3 * step)
	if wait := b.take(later); !about(wait, step) {
		t.Fatalf("after the debt is paid, the next drop waits %v, want %v", wait, step)
	}
	if !b.allow(later.Add(2 * step)) {
		t.Fatal("a token earned is there to take")
	}
	if b.allow(later.Add(2 * step)) {
		t.Fatal("a token taken twice")
	}
}

// about: within a microsecond (the bucket counts in float seconds).
func about(got, want time.Duration) bool {
	return got > want-time.Microsecond && got < want+time.Microsecond
}

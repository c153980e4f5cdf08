package protocol

import (
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		packet string
		want   Message
		err    error
	}{
		{`{"v":1,"op":"hello","pid":42,"fork":true,"sdk":"forkd-python/0.1"}`, Message{V: 1, Op: OpHello, PID: 42, Fork: true, SDK: "forkd-python/0.1"}, nil},
		{`{"v":1,"op":"welcome","worker":0,"generation":1}`, Message{V: 1, Op: OpWelcome, Generation: 1}, nil},
		{`{"v":1,"op":"spawn","seq":7,"worker":3,"generation":2}`, Message{V: 1, Op: OpSpawn, Seq: 7, Worker: 3, Generation: 2}, nil},
		{`{"v":1,"op":"spawned","seq":7,"pid":99}`, Message{V: 1, Op: OpSpawned, Seq: 7, PID: 99}, nil},
		{`{"v":1,"op":"spawn_failed","seq":7,"error":"fork: ENOMEM"}`, Message{V: 1, Op: OpSpawnFailed, Seq: 7, Error: "fork: ENOMEM"}, nil},
		{`{"v":1,"op":"paused","seq":8,"extra":"ignored"}`, Message{V: 1, Op: OpPaused, Seq: 8}, nil},
		{`{"v":1,"op":"error","error":"what?"}`, Message{V: 1, Op: OpError, Error: "what?"}, nil},
		{`{"v":1,"op":"mold","seq":9,"generation":3,"notify_socket":"/run/n/0"}`, Message{V: 1, Op: OpMold, Seq: 9, Generation: 3, NotifySocket: "/run/n/0"}, nil},
		{`{"v":1,"op":"molded","seq":9,"pid":77}`, Message{V: 1, Op: OpMolded, Seq: 9, PID: 77}, nil},
		{`{"v":1,"op":"mold_failed","seq":9,"error":"fork: EAGAIN"}`, Message{V: 1, Op: OpMoldFailed, Seq: 9, Error: "fork: EAGAIN"}, nil},
		{`{"v":1,"op":"hello","pid":77,"fork":true,"mold":true}`, Message{V: 1, Op: OpHello, PID: 77, Fork: true, Mold: true}, nil},
		{`{"v":1,"op":"mold","generation":3}`, Message{V: 1, Op: OpMold, Generation: 3}, ErrMalformed},
		{`{"v":1,"op":"mold","seq":9}`, Message{V: 1, Op: OpMold, Seq: 9}, ErrMalformed},
		{`{"v":1,"op":"molded","seq":9}`, Message{V: 1, Op: OpMolded, Seq: 9}, ErrMalformed},
		{`{"v":1,"op":"mold_failed","seq":9}`, Message{V: 1, Op: OpMoldFailed, Seq: 9}, ErrMalformed},
		{`{"v":2,"op":"hello","pid":42}`, Message{V: 2, Op: OpHello, PID: 42}, ErrVersion},
		{`{"v":1,"op":"hello"}`, Message{V: 1, Op: OpHello}, ErrMalformed},
		{`{"v":1,"op":"spawn","worker":3,"generation":2}`, Message{V: 1, Op: OpSpawn, Worker: 3, Generation: 2}, ErrMalformed},
		{`{"v":1,"op":"spawn","seq":1,"worker":3}`, Message{V: 1, Op: OpSpawn, Seq: 1, Worker: 3}, ErrMalformed},
		{`{"v":1,"op":"refuse"}`, Message{V: 1, Op: OpRefuse}, ErrMalformed},
		{`{"v":1,"op":"dance","seq":3}`, Message{V: 1, Op: "dance", Seq: 3}, ErrMalformed},
		{`{"v":1,"op":"welcome","worker":-1}`, Message{V: 1, Op: OpWelcome, Worker: -1}, ErrMalformed},
		{`{"op":"hello","pid":1}`, Message{Op: OpHello, PID: 1}, ErrMalformed},
		{`not json`, Message{}, ErrMalformed},
		{`{"v":1,"op":"hello","pid":42}{"v":1}`, Message{}, ErrMalformed},
		{"{\"v\":1,\"op\":\"hello\",\"pid\":42,\"sdk\":\"\xff\"}", Message{}, ErrMalformed},
		{`[]`, Message{}, ErrMalformed},
	} {
		got, err := Decode([]byte(tc.packet))
		if tc.err == nil {
			assert.NoError(t, err, tc.packet)
		} else {
			assert.ErrorIs(t, err, tc.err, tc.packet)
		}
		assert.Equal(t, tc.want, got, tc.packet)
	}
	_, err := Decode([]byte(`{"v":1,"op":"hello","pid":1,"sdk":"` + strings.Repeat("x", MaxMessageSize) + `"}`))
	assert.ErrorIs(t, err, ErrMalformed)
}

func TestEncodeRoundTrip(t *testing.T) {
	for _, m := range []Message{
		{Op: OpHello, PID: 12, Fork: true, SDK: "forkd-go"},
		{Op: OpSpawn, Seq: 1, Worker: 5, Generation: 3},
		{Op: OpRefuse, Error: "protocol 2 is not supported"},
		{Op: OpResume, Seq: 99},
		{Op: OpWelcome, Generation: 2, Serve: new(false)},
		{Op: OpMold, Seq: 4, Generation: 2, NotifySocket: "@forkd/notify/0"},
	} {
		b, err := Encode(m)
		require.NoError(t, err)
		got, err := Decode(b)
		require.NoError(t, err, string(b))
		m.V = Version
		assert.Equal(t, m, got)
	}
	_, err := Encode(Message{Op: OpError, Error: strings.Repeat("x", MaxMessageSize)})
	assert.Error(t, err)
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"op":"hello","pid":42,"fork":true}`, `{"v":1,"op":"spawn","seq":7,"worker":3,"generation":2}`,
		`{"v":1,"op":"spawned","seq":7,"pid":99}`, `{"v":2,"op":"hello"}`, `{"v":1}`, `null`, `{"v":1,"op":"error"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, packet []byte) {
		m, err := Decode(packet)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrVersion) {
				t.Fatalf("Decode(%q) = %v, an error of no known kind", packet, err)
			}
			return
		}
		// A message that decodes re-encodes to one that decodes to the same.
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode(%+v): %v", m, err)
		}
		again, err := Decode(b)
		if err != nil || again != m {
			t.Fatalf("round trip of %q: %+v, %v; want %+v", packet, again, err, m)
		}
	})
}

func TestConnCarriesMessagesAndDescriptors(t *testing.T) {
	master, workerFD, err := Socketpair()
	require.NoError(t, err)
	defer master.Close()
	worker, err := NewConn(workerFD)
	require.NoError(t, err)
	defer worker.Close()

	// The master sends a spawn request carrying the new worker's channel.
	child, childFD, err := Socketpair()
	require.NoError(t, err)
	defer child.Close()
	require.NoError(t, master.Send(Message{Op: OpSpawn, Seq: 1, Worker: 1, Generation: 1}, childFD))
	unix.Close(childFD)

	r, err := worker.Receive()
	require.NoError(t, err)
	require.NoError(t, r.Err)
	assert.Equal(t, OpSpawn, r.Message.Op)
	require.Len(t, r.FDs, 1)
	flags, err := unix.FcntlInt(uintptr(r.FDs[0]), unix.F_GETFD, 0)
	require.NoError(t, err)
	assert.NotZero(t, flags&unix.FD_CLOEXEC, "received descriptors must not leak into workers")

	// The received descriptor is the new channel: the new worker says hello on it.
	newWorker, err := NewConn(r.FDs[0])
	require.NoError(t, err)
	require.NoError(t, newWorker.Send(Message{Op: OpHello, PID: os.Getpid()}))
	r, err = child.Receive()
	require.NoError(t, err)
	assert.Equal(t, Message{V: 1, Op: OpHello, PID: os.Getpid()}, r.Message)

	// A bad packet is reported, and the channel goes on.
	_, err = unix.Write(workerFD2(t, worker), []byte("garbage"))
	require.NoError(t, err)
	r, err = master.Receive()
	require.NoError(t, err)
	assert.ErrorIs(t, r.Err, ErrMalformed)
	require.NoError(t, worker.Send(Message{Op: OpPaused, Seq: 4}))
	r, err = master.Receive()
	require.NoError(t, err)
	assert.Equal(t, OpPaused, r.Message.Op)

	// Closing one end is end of file at the other.
	newWorker.Close()
	_, err = child.Receive()
	assert.ErrorIs(t, err, io.EOF)
}

// workerFD2 returns a raw descriptor of c's socket, to write a packet that Send would refuse.
func workerFD2(t *testing.T, c *Conn) int {
	t.Helper()
	raw, err := c.c.SyscallConn()
	require.NoError(t, err)
	var fd int
	require.NoError(t, raw.Control(func(f uintptr) { fd = int(f) }))
	return fd
}

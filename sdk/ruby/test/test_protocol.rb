# frozen_string_literal: true

require_relative "helpers"

# The control channel's encoding (docs/protocol.md section 3) and Channel over real socketpairs.
class ProtocolTest < Minitest::Test
  P = Forkd::Protocol

  def pair
    a, b = UNIXSocket.pair(:SEQPACKET)
    @closers = (@closers || []) + [a, b]
    [P::Channel.new(a), P::Channel.new(b)]
  end

  def teardown
    (@closers || []).each { |s| s.close unless s.closed? }
  end

  def test_roundtrip_adds_v
    data = P.encode({ op: "hello", pid: 42, fork: true, sdk: "x" })
    msg = P.decode(data)
    assert_equal({ "v" => 1, "op" => "hello", "pid" => 42, "fork" => true, "sdk" => "x" }, msg)
    assert_equal 7, P.decode(P.encode({ "v" => 7, "op" => "x" }))["v"], "an explicit v is kept"
    assert_equal Encoding::BINARY, data.encoding
  end

  def test_unicode
    msg = P.decode(P.encode({ "op" => "error", "seq" => 1, "error" => "défaut ✗" }))
    assert_equal "défaut ✗", msg["error"]
  end

  def test_encode_refuses
    assert_raises(ArgumentError) { P.encode({ "seq" => 1 }) }
    assert_raises(ArgumentError) { P.encode({ "op" => 5 }) }
    assert_raises(ArgumentError) { P.encode([1, 2]) }
    assert_raises(ArgumentError) { P.encode({ "op" => "x", "n" => Float::NAN }) }
    assert_raises(ArgumentError) { P.encode({ "op" => "x", "big" => "a" * P::MAX_MESSAGE }) }
  end

  def test_decode_errors
    cases = {
      "" => ["empty packet", nil],
      "\xff\xfe".b => ["not UTF-8", nil],
      "{not json" => [/\Anot JSON/, nil],
      "[1, 2]" => ["not a JSON object", nil],
      '"op"' => ["not a JSON object", nil],
      '{"v": 1, "op": "x", "seq": "7"}' => ["seq is not an integer", nil],
      '{"v": 1, "op": "x", "seq": 1.5}' => ["seq is not an integer", nil],
      '{"op": "x", "seq": 3}' => ["no v", 3],
      '{"v": "1", "op": "x", "seq": 4}' => ["v is not an integer", 4],
      '{"v": true, "op": "x"}' => ["v is not an integer", nil],
      '{"v": 1, "seq": 5}' => ["no op", 5],
      '{"v": 1, "op": 9, "seq": 6}' => ["op is not a string", 6],
      ("[" * 10_000) => [/\Anot JSON/, nil],
    }
    cases.each do |data, (reason, seq)|
      e = assert_raises(P::ProtocolError, data[0, 40].inspect) { P.decode(data.b) }
      if reason.is_a?(Regexp)
        assert_match reason, e.reason
      else
        assert_equal reason, e.reason, data[0, 40].inspect
      end
      if seq.nil?
        assert_nil e.seq
      else
        assert_equal seq, e.seq
      end
    end
    e = assert_raises(P::ProtocolError) { P.decode("x".b * (P::MAX_MESSAGE + 1)) }
    assert_match(/longer than/, e.reason)
  end

  def test_unknown_fields_and_ops_are_messages
    msg = P.decode('{"v": 1, "op": "teleport", "seq": 3, "where": "mars"}'.b)
    assert_equal "teleport", msg["op"]
    assert_equal "mars", msg["where"]
    msg = P.decode('{"v": 2, "op": "welcome", "worker": 1, "generation": 2, "future": [1]}'.b)
    assert_equal 2, msg["v"]
    refute P::OPS.include?("teleport")
    assert_equal %w[hello welcome refuse spawn spawned spawn_failed pause paused resume resumed mold molded mold_failed error stdio].sort, P::OPS.sort
  end

  def test_message_with_a_descriptor
    a, b = pair
    x, y = UNIXSocket.pair(:SEQPACKET)
    a.send_message({ "op" => "spawn", "seq" => 1, "worker" => 1, "generation" => 1 }, [x])
    x.close
    msg, ios = b.recv
    assert_equal "spawn", msg["op"]
    assert_equal 1, ios.size
    got = ios[0]
    assert got.close_on_exec?
    # The received descriptor is the other end of y's pair.
    ch = P::Channel.new(got)
    ch.send_message({ "op" => "hello", "pid" => 1 })
    assert_equal "hello", P::Channel.new(y).recv[0]["op"]
    ch.close
    y.close
  end

  def test_one_packet_one_message
    a, b = pair
    a.send_message({ "op" => "pause", "seq" => 1 })
    a.send_message({ "op" => "resume", "seq" => 2 })
    assert_equal [1, 2], [b.recv[0]["seq"], b.recv[0]["seq"]]
  end

  def test_malformed_packets_never_raise
    a, b = pair
    packets = ["\xff not json".b, "[]", '{"v": 1}', '{"v": 1, "seq": 9}', "x" * (P::MAX_MESSAGE + 10)]
    packets.each { |p| a.sock.send(p, 0) }
    got = packets.map { b.recv }
    got.each { |msg, ios| assert_kind_of P::Invalid, msg; assert_empty ios }
    assert_equal 9, got[3][0].seq
    assert_match(/longer than/, got[4][0].reason)
    # Descriptors that come with an invalid message are closed, not leaked.
    r, w = IO.pipe
    a.sock.sendmsg("nonsense", 0, nil, Socket::AncillaryData.unix_rights(w))
    w.close
    msg, = b.recv
    assert_kind_of P::Invalid, msg
    assert_nil r.read_nonblock(1, exception: false), "the write end was closed by recv"
    r.close
    # Still usable.
    a.send_message({ "op" => "pause", "seq" => 10 })
    assert_equal 10, b.recv[0]["seq"]
  end

  def test_empty_packet_is_not_eof
    a, b = pair
    a.sock.send("", 0)
    msg, = b.recv
    assert_kind_of P::Invalid, msg
    assert_equal "empty packet", msg.reason
    a.send_message({ "op" => "pause", "seq" => 1 })
    assert_equal "pause", b.recv[0]["op"]
  end

  def test_eof
    a, b = pair
    a.close
    assert_equal [nil, []], b.recv
    assert_equal [nil, []], b.recv
  end

  def test_from_fd_checks_the_kind
    s1, s2 = UNIXSocket.pair(:STREAM)
    assert_raises(ArgumentError) { P::Channel.from_fd(s1.fileno) }
    refute s1.closed?
    s1.write("x") # the descriptor is still open and ours
    assert_equal "x", s2.read(1)
    r, w = IO.pipe
    assert_raises(SystemCallError) { P::Channel.from_fd(r.fileno) }
    [s1, s2, r, w].each(&:close)
    q1, q2 = UNIXSocket.pair(:SEQPACKET)
    d = q1.dup
    d.autoclose = false # the Channel owns the descriptor now
    ch = P::Channel.from_fd(d.fileno)
    assert ch.sock.close_on_exec?
    ch.close
    [q1, q2].each(&:close)
  end
end

# frozen_string_literal: true

require_relative "helpers"

# Molds (docs/protocol.md): a serving worker asked for a mold forks it at once, with requests in
# flight; the mold drops the connections and the Puma server it inherited, says hello as a mold,
# readies itself as a template and forks workers that serve. And mold mode's worker 0, told not to
# serve.
class MoldTest < ForkdTest::MasterTest
  include ForkdTest

  def setup
    super
    require_puma
  end

  # The inodes of the sockets pid holds.
  def socket_inodes(pid)
    Dir.glob("/proc/#{pid}/fd/*").filter_map do |f|
      File.readlink(f)[/\Asocket:\[(\d+)\]\z/, 1]
    rescue SystemCallError
      nil
    end
  end

  # How many established TCP connections to port pid holds a descriptor of.
  def connections_held(pid, port)
    inodes = socket_inodes(pid)
    %w[/proc/net/tcp /proc/net/tcp6].sum do |table|
      File.readlines(table).drop(1).count do |line|
        f = line.split
        f[3] == "01" && Integer(f[1].split(":").last, 16) == port && inodes.include?(f[9])
      end
    rescue Errno::ENOENT
      0
    end
  end

  def eventpolls(pid)
    Dir.glob("/proc/#{pid}/fd/*").count do |f|
      File.readlink(f) == "anon_inode:[eventpoll]"
    rescue SystemCallError
      false
    end
  end

  # A worker forked from the template (spawn), welcomed and ready (READY=1 on notify).
  def forked_worker(m, from, index:, generation:, notify: m.notify)
    _, ch = m.spawn(from, index: index, generation: generation)
    w = m.adopt(from.expect("spawned")["pid"], ch)
    assert_equal w.pid, w.expect("hello")["pid"]
    w.send_message({ "op" => "welcome", "worker" => index, "generation" => generation })
    notify.wait_for(w.pid, "READY=1")
    w
  end

  # Send mold to w; returns [the molded reply, the master's end of the mold's channel].
  def ask_mold(m, w, generation:, notify_socket: "")
    ours, theirs = UNIXSocket.pair(:SEQPACKET)
    seq = m.next_seq
    w.send_message({ "op" => "mold", "seq" => seq, "generation" => generation, "notify_socket" => notify_socket }, [theirs])
    theirs.close
    reply = w.expect("molded")
    assert_equal seq, reply["seq"]
    [reply, Forkd::Protocol::Channel.new(ours)]
  end

  # Nothing answers a request on port within a while: nobody accepts.
  def refute_served(port)
    s = TCPSocket.new("127.0.0.1", port)
    s.write("GET /nobody HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_nil IO.select([s], nil, nil, 0.5), "something served"
    s
  end

  def read_response(sock)
    data = +""
    while IO.select([sock], nil, nil, 5)
      chunk = sock.read_nonblock(4096, exception: false)
      break if chunk.nil?

      data << chunk unless chunk == :wait_readable
      break if data.include?("\r\n\r\n") && data.include?("path=")
    end
    data
  end

  def test_a_serving_worker_forks_a_mold_with_a_request_in_flight
    m = master(watchdog_usec: 2_000_000)
    # Without readying: its full collection would finalize (close) the connections whose Ruby
    # objects only the source's dead threads held, and hide whether the mold closes them itself.
    t = m.boot_rack(args: %w[--ready-template off])
    source = forked_worker(m, t, index: 1, generation: 1)
    # The source alone serves from here.
    Process.kill(:TERM, t.pid)
    assert_equal 0, waitpid_timeout(t.pid).exitstatus
    idle = Client.new(m.port)
    assert_includes idle.get("/")[1], "pid=#{source.pid}"
    release = File.join(m.dir, "release")
    in_flight = Client.new(m.port).get_in_thread("/wait?file=#{release}")
    wait_until("the request in flight") { m.events(source.pid).include?("waiting") }
    assert_equal 2, connections_held(source.pid, m.port)

    sink = Notifications.new
    begin
      molded, ch = ask_mold(m, source, generation: 2, notify_socket: sink.address)
      mold = m.adopt(molded["pid"], ch)
      # No quiesce: the request is still in flight, waiting for the file.
      assert in_flight.instance_variable_get(:@thread).alive?, "the mold waited for the request in flight"
      refute_equal source.pid, mold.pid
      assert_equal Process.pid, ppid_of(mold.pid), "the mold is the master's child (double fork)"
      hello = mold.expect("hello")
      assert_equal({ "pid" => mold.pid, "fork" => true, "mold" => true },
                   hello.slice("pid", "fork", "mold"))
      mold.send_message({ "op" => "welcome", "worker" => 0, "generation" => 2 })
      # Its notifications go to the socket the mold message named, on its own heartbeats.
      sink.wait_for(mold.pid, "READY=1")
      sink.wait_for(mold.pid, "WATCHDOG=1", timeout: 3)
      refute_includes m.notify.lines(mold.pid), "READY=1"

      # It closed (close(2), not shutdown(2)) the connections and the Puma poller it inherited.
      assert_equal 0, connections_held(mold.pid, m.port)
      assert_operator eventpolls(mold.pid), :<, eventpolls(source.pid)
      assert_equal 2, connections_held(source.pid, m.port)
      File.write(release, "")
      code, body, = in_flight.join
      assert_equal 200, code
      assert_includes body, "pid=#{source.pid}"
      assert_includes idle.get("/")[1], "pid=#{source.pid}", "the keep-alive connection of the source still works"

      # Hooks: the fork's in the source (which went on serving); the child hooks, after_mold and
      # before_refork, once, in the mold; no after_worker_boot, since it does not serve.
      assert_equal %w[child1 child2 boot waiting prepare2 prepare1 parent1 parent2], m.events(source.pid)
      assert_equal %w[child1 child2 after_mold before_refork], m.events(mold.pid)
      after_mold = m.hooks.find { |p, e, _| p == mold.pid && e == "after_mold" }.last
      assert_equal({ "LISTEN_PID" => mold.pid.to_s, "FORKD_WORKER" => "0", "FORKD_GENERATION" => "2",
                     "NOTIFY_SOCKET" => sink.address, "WATCHDOG_PID" => mold.pid.to_s }, after_mold["env"])
      assert_equal [true, true, false, 0, 2, 1, true],
                   after_mold.values_at("template", "mold", "serving", "index", "generation", "listeners", "fds_survive_gc")

      # pause and resume are answered at once, and run no refork hook again.
      m.request(mold, "pause", "paused")
      m.request(mold, "resume", "resumed")
      idle.close
      in_flight.close
      Process.kill(:TERM, source.pid)
      assert_equal 0, waitpid_timeout(source.pid).exitstatus
      # The mold never accepts.
      waiting = refute_served(m.port)

      # A worker forked from the mold: a fresh Puma server, its own heartbeats.
      w = forked_worker(m, mold, index: 1, generation: 2, notify: sink)
      assert_equal %w[child1 child2 boot], m.events(w.pid)
      assert_equal Process.pid, ppid_of(w.pid)
      sink.wait_for(w.pid, "WATCHDOG=1", timeout: 3)
      assert_includes read_response(waiting), "pid=#{w.pid} worker=1 generation=2 path=/nobody"
      waiting.close
      assert_includes get(m.port)[1], "pid=#{w.pid}"
      assert_equal %w[child1 child2 after_mold before_refork prepare2 prepare1 parent1 parent2], m.events(mold.pid)
    ensure
      sink.close
    end
  end

  def test_worker_0_welcomed_not_to_serve_is_a_template_that_never_accepts
    m = master
    t = m.start_rack
    t.expect("hello")
    t.send_message({ "op" => "welcome", "worker" => 0, "generation" => 1, "serve" => false })
    m.notify.wait_for(t.pid, "READY=1")
    waiting = refute_served(m.port)
    assert_equal %w[after_mold before_refork], m.events(t.pid)
    m.request(t, "pause", "paused")
    w = forked_worker(m, t, index: 1, generation: 1)
    m.request(t, "resume", "resumed")
    assert_includes read_response(waiting), "pid=#{w.pid} worker=1"
    waiting.close
    assert_equal %w[after_mold before_refork prepare2 prepare1 parent1 parent2], m.events(t.pid)
    # Readied once, before READY=1: not again for the spawn.
    assert_equal 1, t.read_log.scan("readied the template").size
  end

  def test_a_mold_request_that_cannot_be_met_is_answered
    m = master
    t = m.boot_rack
    seq = m.next_seq
    t.send_message({ "op" => "mold", "seq" => seq, "generation" => 2 }) # no descriptor
    reply = t.expect("mold_failed")
    assert_equal seq, reply["seq"]
    assert_includes reply["error"], "descriptors"
    [{ "generation" => "two" }, { "generation" => 2, "notify_socket" => "relative/path" }].each do |fields|
      seq = m.next_seq
      t.send_message({ "op" => "mold", "seq" => seq }.merge(fields))
      reply = t.expect("error")
      assert_equal seq, reply["seq"]
    end
    assert_equal 200, get(m.port)[0], "the worker serves on"
  end

  def test_a_failing_before_fork_hook_fails_the_mold
    m = master
    t = m.boot_rack(env: { "HOOKAPP_FAIL_PREPARE" => "1" })
    ours, theirs = UNIXSocket.pair(:SEQPACKET)
    seq = m.next_seq
    t.send_message({ "op" => "mold", "seq" => seq, "generation" => 2 }, [theirs])
    theirs.close
    reply = t.expect("mold_failed")
    assert_equal seq, reply["seq"]
    assert_includes reply["error"], "prepare failed on purpose"
    # Nobody holds the mold's channel: the master sees end of file.
    assert IO.select([ours], nil, nil, 5)
    assert_equal "", ours.recv(10)
    ours.close
    assert_equal 200, get(m.port)[0]
  end
end

# A puma.rb's hooks in mold mode, through forkd-rack -C: on_refork in the mold (it forks the
# refork's workers), on_worker_boot only in the workers that serve.
class MoldPumaConfigTest < ForkdTest::MasterTest
  include ForkdTest

  def test_a_puma_rb_on_refork_runs_in_the_mold_and_on_worker_boot_in_its_workers
    require_puma
    m = master
    log = File.join(m.dir, "puma-hooks.log")
    conf = File.join(m.dir, "puma.rb")
    File.write(conf, <<~RUBY)
      on_worker_boot { |i| File.write(#{log.inspect}, "boot \#{i} \#{Process.pid}\\n", mode: "a") }
      on_refork { File.write(#{log.inspect}, "refork \#{Process.pid}\\n", mode: "a") }
    RUBY
    t = m.boot_rack(args: ["-C", conf])
    ours, theirs = UNIXSocket.pair(:SEQPACKET)
    t.send_message({ "op" => "mold", "seq" => m.next_seq, "generation" => 2 }, [theirs])
    theirs.close
    mold = m.adopt(t.expect("molded")["pid"], Forkd::Protocol::Channel.new(ours))
    mold.expect("hello")
    mold.send_message({ "op" => "welcome", "worker" => 0, "generation" => 2, "serve" => false })
    m.notify.wait_for(mold.pid, "READY=1")
    _, ch = m.spawn(mold, index: 1, generation: 2)
    w = m.adopt(mold.expect("spawned")["pid"], ch)
    w.expect("hello")
    w.send_message({ "op" => "welcome", "worker" => 1, "generation" => 2 })
    m.notify.wait_for(w.pid, "READY=1")
    assert_equal ["boot 0 #{t.pid}", "refork #{mold.pid}", "boot 1 #{w.pid}"], File.readlines(log, chomp: true)
  end
end

# frozen_string_literal: true

require_relative "helpers"

# The runtime (Forkd.serve through forkd-rack and Puma) against a fake master: handshake, spawn,
# pause/resume, hooks, graceful stop, master gone, versions.
class RuntimeTest < ForkdTest::MasterTest
  include ForkdTest

  def setup
    super
    require_puma
  end

  def test_hello_then_ready_only_after_welcome
    m = master
    w = m.start_rack
    hello = w.expect("hello")
    assert_equal 1, hello["v"]
    assert_equal w.pid, hello["pid"]
    assert_equal true, hello["fork"]
    assert_match %r{\Aforkd-ruby/}, hello["sdk"]
    sleep 0.3
    refute_includes m.notify.lines(w.pid), "READY=1"
    w.send_message({ "op" => "welcome", "worker" => 0, "generation" => 3 })
    m.notify.wait_for(w.pid, "READY=1")
    code, body = get(m.port)
    assert_equal 200, code
    assert_includes body, "pid=#{w.pid} worker=0 generation=3"
    boot = m.hooks.select { |_, e, _| e == "boot" }.map(&:last)
    assert_equal 1, boot.size
    assert_equal true, boot[0]["template"]
    assert_equal w.pid.to_s, boot[0]["env"]["LISTEN_PID"]
    assert_equal 1, boot[0]["listeners"]
  end

  def test_refuse_exits_1_with_the_reason
    m = master
    w = m.start_rack
    w.expect("hello")
    w.send_message({ "op" => "refuse", "error" => "this master speaks protocol 7" })
    w.channel.close
    status = waitpid_timeout(w.pid)
    assert_equal 1, status.exitstatus
    assert_includes w.read_log, "this master speaks protocol 7"
    refute_includes m.notify.lines(w.pid), "READY=1"
  end

  def test_protocol_version_mismatch
    m = master
    w = m.start_rack(protocol_version: "2")
    status = waitpid_timeout(w.pid)
    assert_equal 1, status.exitstatus
    assert_includes w.read_log, "forkd-ruby speaks protocol 1, this forkd master speaks 2: upgrade the SDK"
  end

  def test_eof_on_the_channel_stops_the_worker
    m = master
    w = m.boot_rack
    w.channel.close
    status = waitpid_timeout(w.pid)
    assert_equal 0, status.exitstatus, w.read_log
    m.notify.wait_for(w.pid, "STOPPING=1")
  end

  def test_malformed_messages_are_answered_not_fatal
    m = master
    w = m.boot_rack
    w.channel.sock.send("\xff not json".b, 0)
    w.channel.sock.send("[1, 2]", 0)
    w.channel.sock.send('{"v": 1, "seq": 41}', 0)
    assert_equal 41, w.expect("error")["seq"]
    w.channel.sock.send('{"v": 1, "op": "teleport", "seq": 42}', 0)
    reply = w.expect("error")
    assert_equal 42, reply["seq"]
    assert_includes reply["error"], "unknown op"
    w.channel.sock.send('{"v": 1, "op": "spawn", "seq": 43, "worker": "x"}', 0)
    assert_equal 43, w.expect("error")["seq"]
    w.channel.sock.send('{"v": 1, "op": "spawned", "seq": 44}', 0)
    assert_includes w.expect("error")["error"], "unexpected op"
    # Still alive and answering.
    m.request(w, "pause", "paused")
    m.request(w, "resume", "resumed")
    assert_equal 200, get(m.port)[0]
  end

  def test_spawn_makes_a_worker_reparented_to_the_master
    m = master(watchdog_usec: 2_000_000)
    t = m.boot_rack
    seq, ch = m.spawn(t, index: 1, generation: 1)
    spawned = t.expect("spawned")
    assert_equal seq, spawned["seq"]
    pid = spawned["pid"]
    w = m.adopt(pid, ch)
    refute_equal t.pid, pid
    # The grandchild is re-parented to the (subreaper) master, not the template.
    assert_equal Process.pid, ppid_of(pid)
    hello = w.expect("hello")
    assert_equal pid, hello["pid"]
    assert_equal false, hello["fork"]
    sleep 0.2
    refute_includes m.notify.lines(pid), "READY=1"
    w.send_message({ "op" => "welcome", "worker" => 1, "generation" => 1 })
    m.notify.wait_for(pid, "READY=1")
    m.notify.wait_for(pid, "WATCHDOG=1", timeout: 3)

    hooks = m.hooks
    boot = hooks.select { |_, e, _| e == "boot" }.to_h { |p, _, d| [p, d] }
    env = boot[pid]["env"]
    assert_equal({ "LISTEN_PID" => pid.to_s, "FORKD_WORKER" => "1", "FORKD_GENERATION" => "1",
                   "FORKD_CONTROL_FD" => env["FORKD_CONTROL_FD"], "WATCHDOG_PID" => pid.to_s }, env)
    refute_equal "4", env["FORKD_CONTROL_FD"]
    assert_equal false, boot[pid]["template"]
    assert_equal 1, boot[pid]["index"]
    assert_equal 1, boot[pid]["listeners"]
    # Hook order: prepare in reverse, parent in order, in the template; child hooks and boot once
    # in the worker; nothing in the intermediate child.
    assert_equal %w[boot prepare2 prepare1 parent1 parent2], m.events(t.pid)
    assert_equal %w[child1 child2 boot], m.events(pid)
    assert_equal [t.pid, pid].sort, hooks.map(&:first).uniq.sort
    child1 = hooks.find { |_, e, _| e == "child1" }.last
    assert_equal pid.to_s, child1["listen_pid"]

    # The new worker serves on its own once the template is gone.
    Process.kill(:TERM, t.pid)
    assert_equal 0, waitpid_timeout(t.pid).exitstatus
    code, body = get(m.port)
    assert_equal 200, code
    assert_includes body, "pid=#{pid} worker=1"
  end

  def test_spawn_waits_for_the_request_in_flight
    m = master
    t = m.boot_rack
    slow = Client.new(m.port).get_in_thread("/slow?ms=700")
    m.wait_began("/slow")
    seq, ch = m.spawn(t, index: 1)
    spawned = t.expect("spawned")
    got_at = now
    assert_equal seq, spawned["seq"]
    m.adopt(spawned["pid"], ch)
    assert_equal 200, slow.join[0]
    # The request takes 700 ms in the server: spawned came after it ended.
    assert_operator got_at - slow.started_at, :>=, 0.7
    slow.close
    # The template serves again (it paused for this spawn alone).
    assert_equal 200, get(m.port)[0]
  end

  def test_spawn_failure_is_reported
    m = master
    t = m.boot_rack
    seq = m.next_seq
    t.send_message({ "op" => "spawn", "seq" => seq, "worker" => 1, "generation" => 1 }) # no descriptor
    reply = t.expect("spawn_failed")
    assert_equal seq, reply["seq"]
    assert_includes reply["error"], "descriptors"
    assert_equal 200, get(m.port)[0]
  end

  def test_failing_prepare_hook_fails_the_spawn
    m = master
    t = m.boot_rack(env: { "HOOKAPP_FAIL_PREPARE" => "1" })
    seq, = m.spawn(t, index: 1)
    reply = t.expect("spawn_failed")
    assert_equal seq, reply["seq"]
    assert_includes reply["error"], "prepare failed on purpose"
    assert_equal 200, get(m.port)[0], "the template serves on"
  end

  def test_library_fork_runs_the_hooks
    m = master
    t = m.boot_rack
    assert_equal 200, get(m.port, "/fork")[0]
    hooks = m.hooks
    assert_equal %w[boot prepare2 prepare1 parent1 parent2], m.events(t.pid)
    others = hooks.map(&:first).uniq - [t.pid]
    assert_equal 1, others.size
    assert_equal %w[child1 child2 library-child], m.events(others[0])
  end

  def test_pause_waits_for_in_flight_and_closes_idle_connections
    m = master
    t = m.boot_rack
    idle = Client.new(m.port)
    assert_equal 200, idle.get("/")[0]
    slow = Client.new(m.port).get_in_thread("/slow?ms=700")
    m.wait_began("/slow")
    m.request(t, "pause", "paused")
    paused_at = now
    code, _, res = slow.join
    assert_equal 200, code
    assert_equal "close", res["connection"], "a response finished while quiescing closes its connection"
    assert_operator paused_at - slow.started_at, :>=, 0.7
    # The idle keep-alive connection, silent for the drain timeout, was closed by the server.
    assert IO.select([idle.socket], nil, nil, 2), "the idle connection was not closed"
    assert_nil idle.socket.read_nonblock(1, exception: false)
    assert_equal %w[boot before_refork], m.events(t.pid)

    # While paused nothing is served; resume serves what waited.
    waiting = TCPSocket.new("127.0.0.1", m.port)
    waiting.write("GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert_nil IO.select([waiting], nil, nil, 0.4), "served while paused"
    m.request(t, "resume", "resumed")
    data = +""
    while IO.select([waiting], nil, nil, 5) && (chunk = waiting.read_nonblock(4096, exception: false))
      break if chunk.nil?

      data << chunk unless chunk == :wait_readable
    end
    waiting.close
    assert data.start_with?("HTTP/1.1 200 OK"), data
    assert_includes data, "path=/late"
    assert_equal %w[boot before_refork after_refork], m.events(t.pid)
    idle.close
    slow.close
  end

  def test_refork_pause_spawns_resume
    m = master
    t = m.boot_rack
    m.request(t, "pause", "paused")
    # Both spawns at once: the second is queued in the template while it forks the first.
    spawns = [1, 2].map { |i| m.spawn(t, index: i, generation: 2) }
    workers = [1, 2].zip(spawns).map do |i, (seq, ch)|
      spawned = t.expect("spawned")
      assert_equal seq, spawned["seq"]
      w = m.adopt(spawned["pid"], ch)
      assert_equal w.pid, w.expect("hello")["pid"]
      w.send_message({ "op" => "welcome", "worker" => i, "generation" => 2 })
      m.notify.wait_for(w.pid, "READY=1")
      w
    end
    m.request(t, "resume", "resumed")
    assert_equal %w[boot before_refork prepare2 prepare1 parent1 parent2 prepare2 prepare1 parent1 parent2 after_refork],
                 m.events(t.pid)
    workers.each do |w|
      assert_equal %w[child1 child2 boot], m.events(w.pid)
      assert_equal Process.pid, ppid_of(w.pid)
    end
    assert_equal 200, get(m.port)[0]
    # Nobody else holds a copy of a worker's end of its channel (not the template, not a sibling
    # forked while that spawn was queued): once the worker dies, the master sees EOF.
    Process.kill(:KILL, t.pid)
    waitpid_timeout(t.pid)
    assert_equal [nil, []], t.recv(timeout: 5)
    workers.reverse_each do |w|
      Process.kill(:KILL, w.pid)
      waitpid_timeout(w.pid)
      assert_equal [nil, []], w.recv(timeout: 5)
    end
  end

  # Readying (Forkd::Readying): before the first fork of a refork, one full collection and three
  # minor ones in the template (compact, promote); none before the second fork of the same refork,
  # since the heap has not changed; none at all with forkd-rack --ready-template off.
  def test_template_readies_its_heap_once_per_refork
    [[[], [[1, 4], [0, 0]]], [%w[--ready-template off], [[0, 0], [0, 0]]]].each do |args, want|
      m = master
      t = m.boot_rack(args: args)
      m.request(t, "pause", "paused")
      [1, 2].each do |i|
        _, ch = m.spawn(t, index: i, generation: 2)
        m.adopt(t.expect("spawned")["pid"], ch)
      end
      m.request(t, "resume", "resumed")
      mine = m.hooks.select { |pid, _, _| pid == t.pid }
      before = mine.select { |_, e, _| e == "prepare1" }.map(&:last)
      after = mine.select { |_, e, _| e == "parent1" }.map(&:last)
      got = before.zip(after).map { |b, a| [a["major"] - b["major"], a["gc"] - b["gc"]] }
      # A collection of the program's own may fall in between: at least the readying's, and no
      # major one beyond it.
      assert_equal want.map(&:first), got.map(&:first), "major collections around each fork (#{args})"
      got.zip(want).each { |(_, g), (_, w)| assert_operator g, :>=, w, "collections around each fork (#{args}): #{got}" }
      assert_operator got[1][1], :<, 4, "the second fork readied again (#{args}): #{got}" if args.empty?
      Process.kill(:KILL, t.pid)
      waitpid_timeout(t.pid)
    end
  end

  def test_sigterm_finishes_the_request_in_flight
    m = master
    t = m.boot_rack
    slow = Client.new(m.port).get_in_thread("/slow?ms=700")
    m.wait_began("/slow")
    Process.kill(:TERM, t.pid)
    m.notify.wait_for(t.pid, "STOPPING=1")
    Process.kill(:TERM, t.pid) # absorbed
    code, body, = slow.join
    assert_equal 200, code, body
    assert_includes body, "path=/slow"
    status = waitpid_timeout(t.pid)
    assert status.exited?, status.inspect
    assert_equal 0, status.exitstatus, t.read_log
    slow.close
  end

  def test_sigterm_closes_idle_keepalive_connections
    m = master
    t = m.boot_rack
    idle = Client.new(m.port)
    assert_equal 200, idle.get("/")[0]
    Process.kill(:TERM, t.pid)
    assert_equal 0, waitpid_timeout(t.pid, 5).exitstatus
    assert IO.select([idle.socket], nil, nil, 2)
    assert_nil idle.socket.read_nonblock(1, exception: false)
    idle.close
  end

  def test_forked_worker_stops_on_eof
    m = master
    t = m.boot_rack
    pid, ch = m.spawn_ready(t, index: 1)
    ch.close
    assert_equal 0, waitpid_timeout(pid).exitstatus
    assert alive?(t.pid)
  end

  def test_request_count_is_reported
    m = master
    t = m.boot_rack
    c = Client.new(m.port)
    7.times { assert_equal 200, c.get("/")[0] }
    c.close
    m.notify.wait_for(t.pid, "X_FORKD_REQUESTS=7", timeout: 3)
    counts = m.notify.items(t.pid).select { |_, text, _| text.include?("X_FORKD_REQUESTS=") }
    times = counts.map(&:last)
    assert times.each_cons(2).all? { |a, b| b - a >= 0.9 }, "at most about once a second: #{times}"
  end

  def test_exec_mode_ready_and_master_gone
    # No FORKD_CONTROL_FD: READY=1 without handshake; the worker exits when its parent (the
    # master) does, seen through a pidfd. A stand-in master starts the worker and sleeps.
    m = master
    launcher = m.start(["-e", <<~RUBY], control: false)
      pid = Process.spawn({ "LISTEN_PID" => nil }, "/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh",
                          #{RUBY.inspect}, #{FORKD_RACK.inspect}, #{File.join(APPS, "hookapp.ru").inspect}, 3 => 3)
      File.write(ENV["HOOK_LOG"] + ".tmp", pid.to_s)
      File.rename(ENV["HOOK_LOG"] + ".tmp", ENV["HOOK_LOG"] + ".pid")
      sleep 60
    RUBY
    pidfile = "#{m.hook_log}.pid"
    pid = wait_until("the worker's pid") { File.exist?(pidfile) && Integer(File.read(pidfile), 10) }
    m.pids << pid
    m.notify.wait_for(pid, "READY=1")
    assert_equal 200, get(m.port)[0]
    assert_equal launcher.pid, ppid_of(pid)
    Process.kill(:KILL, launcher.pid)
    waitpid_timeout(launcher.pid)
    m.notify.wait_for(pid, "STOPPING=1", timeout: 3)
    # Re-parented to us (a subreaper): ours to reap.
    assert_equal 0, waitpid_timeout(pid).exitstatus
  end

  PLAIN = <<~RUBY
    require "forkd"
    ls = Forkd.listeners
    raise "listeners: \#{ls}" unless ls.size == 1 && Forkd.listeners_by_name.keys == ["http"]
    raise "ready" unless Forkd.ready == true
    raise "template" if Forkd.template?
    Forkd.add_requests(5)
    exit(Forkd.master_gone.wait(10) ? 0 : 3)
  RUBY

  def test_plain_api_in_fork_mode_says_hello_without_fork
    m = master
    w = m.start(["-e", PLAIN])
    hello = w.expect("hello")
    assert_equal false, hello["fork"]
    sleep 0.2
    refute_includes m.notify.lines(w.pid), "READY=1"
    w.send_message({ "op" => "welcome", "worker" => 0, "generation" => 1 })
    m.notify.wait_for(w.pid, "READY=1")
    m.notify.wait_for(w.pid, "X_FORKD_REQUESTS=5")
    seq = m.next_seq
    w.send_message({ "op" => "pause", "seq" => seq })
    assert_equal seq, w.expect("error")["seq"]
    seq, = m.spawn(w, index: 1)
    reply = w.expect("spawn_failed")
    assert_equal seq, reply["seq"]
    w.channel.close
    assert_equal 0, waitpid_timeout(w.pid).exitstatus, w.read_log
  end
end

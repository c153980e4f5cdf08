# frozen_string_literal: true

require_relative "helpers"

# The plain helpers: listeners, the environment, versions, what "not under forkd" answers.
class APITest < ForkdTest::MasterTest
  def result_of(worker)
    status = ForkdTest.waitpid_timeout(worker.pid)
    log = worker.read_log
    line = log.lines.reverse.find { |l| l.start_with?("{") }
    assert line, "no result; log:\n#{log}"
    [status, JSON.parse(line), log]
  end

  # With FORKD_KSM=1 (memory.ksm) the SDK opts its process in to KSM whole, as kernels before
  # 6.16 drop the shim's opt-in at the exec; without it, it leaves the process as it is.
  def test_ksm_opt_in
    skip "no /proc/self/ksm_stat (Linux 6.1+ with CONFIG_KSM)" unless File.exist?("/proc/self/ksm_stat")
    [["1", "yes"], ["", "no"]].each do |value, merge_any|
      m = master
      w = m.start(["-e", <<~RUBY], control: false, env: { "FORKD_KSM" => value })
        require "forkd"; require "json"
        Forkd.listeners
        puts JSON.generate(merge_any: File.read("/proc/self/ksm_stat")[/ksm_merge_any: ([a-z]+)/, 1])
      RUBY
      status, out, log = result_of(w)
      assert status.success?, log
      skip "this kernel has no PR_SET_MEMORY_MERGE (Linux 6.4+)" if value == "1" && out["merge_any"].nil?
      assert_equal merge_any, out["merge_any"], "FORKD_KSM=#{value.inspect}"
    end
  end

  def test_listeners_and_environment
    m = master(watchdog_usec: 3_000_000)
    w = m.start(["-e", <<~RUBY], index: 2, generation: 5, control: false)
      require "forkd"; require "json"
      ls = Forkd.listeners
      again = Forkd.listeners
      by = Forkd.listeners_by_name
      puts JSON.generate(
        n: ls.size, klass: ls[0].class.name, same: ls[0].equal?(again[0]), fd: ls[0].fileno,
        cloexec: ls[0].close_on_exec?, port: ls[0].local_address.ip_port, names: by.keys,
        index: Forkd.worker_index, generation: Forkd.generation, template: Forkd.template?,
        watchdog: Forkd::Worker.state.watchdog)
    RUBY
    status, out, log = result_of(w)
    assert status.success?, log
    assert_equal({ "n" => 1, "klass" => "TCPServer", "same" => true, "fd" => 3, "cloexec" => true,
                   "port" => m.port, "names" => ["http"], "index" => 2, "generation" => 5,
                   "template" => false, "watchdog" => 3.0 }, out)
  end

  def test_listen_pid_of_another_process
    m = master
    w = m.start(["-e", <<~RUBY], control: false)
      require "forkd"; require "json"
      ENV["LISTEN_PID"] = (Process.pid + 1).to_s   # inherited from a worker this process is a child of
      ENV["WATCHDOG_USEC"] = "1000000"; ENV["WATCHDOG_PID"] = (Process.pid + 1).to_s
      puts JSON.generate(n: Forkd.listeners.size, watchdog: Forkd::Worker.state.watchdog)
    RUBY
    status, out, log = result_of(w)
    assert status.success?, log
    assert_equal({ "n" => 0, "watchdog" => 0.0 }, out)
  end

  def test_not_under_forkd
    status, out, log = ForkdTest.run_script(<<~RUBY, env: { "NOTIFY_SOCKET" => nil, "LISTEN_FDS" => nil, "FORKD_WORKER" => nil })
      require "forkd"; require "json"
      puts JSON.generate(listeners: Forkd.listeners.size, by_name: Forkd.listeners_by_name, index: Forkd.worker_index,
                         generation: Forkd.generation, ready: Forkd.ready, status: Forkd.status("x"),
                         template: Forkd.template?, requests: Forkd.add_requests(3), gone: Forkd.master_gone?)
    RUBY
    assert status.success?, log
    assert_equal({ "listeners" => 0, "by_name" => {}, "index" => -1, "generation" => 0, "ready" => false,
                   "status" => false, "template" => false, "requests" => 3, "gone" => false }, out)
  end

  def test_malformed_environment
    [{ "LISTEN_FDNAMES" => "a:b" }, { "LISTEN_FDS" => "2" }, { "LISTEN_FDS" => "x" },
     { "FORKD_WORKER" => "-5" }, { "WATCHDOG_USEC" => "0" }, { "FORKD_GENERATION" => "two" },
     { "FORKD_CONTROL_FD" => "3" }].each do |env|
      m = master
      w = m.start(["-e", <<~RUBY], control: false, env: env)
        require "forkd"; require "json"
        begin
          Forkd.listeners; Forkd.worker_index; Forkd::Worker.state.channel_error&.then { |e| raise e }
          puts JSON.generate(error: nil)
        rescue Forkd::Error => e
          puts JSON.generate(error: e.message)
        end
      RUBY
      status, out, log = result_of(w)
      assert status.success?, "#{env}: #{log}"
      assert out["error"], "#{env}: #{out}"
    end
  end

  def test_protocol_version_mismatch
    status, out, log = ForkdTest.run_script('require "forkd"; puts "{}"', env: { "FORKD_PROTOCOL" => "2" })
    assert_equal 1, status.exitstatus, log
    assert_nil out
    assert_includes log, "forkd-ruby speaks protocol 1, this forkd master speaks 2: upgrade the SDK"
  end
end

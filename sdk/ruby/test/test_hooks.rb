# frozen_string_literal: true

require_relative "helpers"

# The fork hooks on Process._fork, each case in a fresh Ruby process (hooks are global).
class HooksTest < Minitest::Test
  RECORDER = <<~RUBY
    require "forkd"
    require "json"
    $r, $w = IO.pipe
    def rec(s) = $w.syswrite("\#{Process.pid}:\#{s}\\n")
    def result(extra = {})
      $w.close
      events = $r.read.split.map { |l| l.split(":", 2) }
      puts JSON.generate({ me: Process.pid, events: events }.merge(extra))
    end
  RUBY

  def run_ruby(script)
    status, out, log = ForkdTest.run_script(RECORDER + script)
    assert status.success?, log
    refute_nil out, log
    out
  end

  def events_of(out, pid)
    out["events"].select { |p, _| p == pid.to_s }.map { |_, e| e }
  end

  def test_order_around_every_kind_of_fork
    out = run_ruby(<<~RUBY)
      Forkd.before_fork { rec("prepare-a") }
      b = Forkd.before_fork(-> { rec("prepare-b") })
      raise "registration returns the hook" unless b.respond_to?(:call)
      Forkd.after_fork_parent { rec("parent-a") }
      Forkd.after_fork_parent { rec("parent-b") }
      Forkd.after_fork_child { rec("child-a") }
      Forkd.after_fork_child { rec("child-b") }
      kids = []
      kids << fork { exit!(0) }                       # Kernel#fork
      Process.wait(kids.last)
      pid = Process.fork                              # Process.fork
      exit!(0) if pid.nil?
      kids << pid
      Process.wait(pid)
      io = IO.popen("-")                              # IO.popen("-")
      if io.nil?
        exit!(0)
      end
      kids << io.pid
      io.read
      io.close
      t = Thread.new { fork { exit!(0) } }            # a library's thread
      kids << t.value
      Process.wait(kids.last)
      system("true")                                  # no Ruby fork: no hooks
      Process.wait(Process.spawn("true"))
      result(kids: kids)
    RUBY
    mine = events_of(out, out["me"])
    assert_equal %w[prepare-b prepare-a parent-a parent-b] * 4, mine
    out["kids"].each do |kid|
      assert_equal %w[child-a child-b], events_of(out, kid), "child #{kid}"
    end
    assert_equal 4 * 4 + 4 * 2, out["events"].size
  end

  def test_sdk_forks_run_no_user_hooks
    out = run_ruby(<<~RUBY)
      Forkd.before_fork { rec("prepare") }
      Forkd.after_fork_parent { rec("parent") }
      Forkd.after_fork_child { rec("child") }
      pid = Forkd::Hooks.sdk_fork
      if pid.nil?
        rec("sdk-child")
        exit!(0)
      end
      Process.wait(pid)
      raise "the flag is cleared after the fork" if Forkd::Hooks.sdk_forking?
      pid2 = fork { exit!(0) }
      Process.wait(pid2)
      result(sdk: pid, lib: pid2)
    RUBY
    assert_equal %w[prepare parent], events_of(out, out["me"])
    assert_equal %w[sdk-child], events_of(out, out["sdk"])
    assert_equal %w[child], events_of(out, out["lib"])
  end

  def test_a_failing_hook_is_reported_and_the_fork_goes_on
    out = run_ruby(<<~RUBY)
      Forkd.before_fork { rec("prepare-ok") }
      Forkd.before_fork { raise "prepare broke" }
      Forkd.after_fork_child { raise "child broke" }
      Forkd.after_fork_child { rec("child-ok") }
      pid = fork { rec("forked"); exit!(0) }
      Process.wait(pid)
      result(kid: pid, status: $?.exitstatus)
    RUBY
    assert_equal %w[prepare-ok], events_of(out, out["me"])
    assert_equal %w[child-ok forked], events_of(out, out["kid"])
    assert_equal 0, out["status"]
  end

  def test_registration_errors
    out = run_ruby(<<~RUBY)
      errors = []
      [-> { Forkd.before_fork }, -> { Forkd.after_fork_child(-> {}) { } }, -> { Forkd.after_refork(42) }].each do |f|
        f.call
        errors << nil
      rescue ArgumentError, TypeError => e
        errors << e.class.name
      end
      result(errors: errors)
    RUBY
    assert_equal %w[ArgumentError ArgumentError TypeError], out["errors"]
  end
end

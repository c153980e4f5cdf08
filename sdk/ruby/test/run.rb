# frozen_string_literal: true

# Runs the whole suite: ruby -Isdk/ruby/lib -Isdk/ruby/test sdk/ruby/test/run.rb
# (any -n/--name filter minitest takes works too). The suite is bounded: it aborts after
# FORKD_TEST_DEADLINE seconds (default 120) with every thread's backtrace, whatever hangs.

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__), __dir__)
$LOAD_PATH.uniq!

deadline = Float(ENV.fetch("FORKD_TEST_DEADLINE", "120"))
watchdog = Thread.new do
  sleep deadline
  warn "\nforkd ruby tests: still running after #{deadline}s; aborting. Threads:"
  Thread.list.each { |t| warn "#{t.inspect}\n  #{(t.backtrace || []).first(15).join("\n  ")}" }
  exit!(3)
end
watchdog.name = "test-deadline"

Dir[File.join(__dir__, "test_*.rb")].sort.each { |f| require f }

require "minitest/autorun"

# frozen_string_literal: true

# The Rack app of the mold tests (test/mold_test.go), under forkd-rack with
# fork_worker.refork_from = "warmest". Each process counts the requests it serves, and on its
# MOLDRACK_WARM_AFTER-th (default 20) it marks its heap: WARM becomes "pid-<its pid>". A process
# forked from it (a mold, and the workers forked from the mold) inherits the mark, so a worker
# says which process's heap it was forked from; one forked from a template that never served
# says "none".
#
#   GET /                  "pid=<pid> warm=<mark>"
#   GET /slow?ms=N         the same, after N milliseconds; from 1000 on, it prints "slow N ms by
#                          pid=<pid>" on stdout when it begins
#   GET /hold?until=PATH   the same, once PATH exists (60 s at most); it prints "held by pid=<pid>"
#                          on stdout when it begins
#
# With MOLDRACK_HOLD_REFORK=PATH, the template's before_refork hook (template mode: at each
# refork's pause; mold mode: in each template, at its boot) waits until PATH exists (60 s at most)
# and prints "refork held by pid=<pid>" on stdout when it begins (test/priority_test.go).

if (hold = ENV["MOLDRACK_HOLD_REFORK"])
  Forkd.before_refork do
    $stdout.puts("refork held by pid=#{Process.pid}")
    $stdout.flush
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 60
    sleep(0.05) until File.exist?(hold) || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  end
end

WARM_AFTER = Integer(ENV.fetch("MOLDRACK_WARM_AFTER", "20"), 10)

module Mold
  @lock = Mutex.new
  @served = 0
  @warm = "none"

  class << self
    attr_reader :warm

    def served!
      @lock.synchronize do
        @served += 1
        @warm = "pid-#{Process.pid}" if @served == WARM_AFTER
      end
    end
  end
end

run(lambda do |env|
  Mold.served!
  query = env["QUERY_STRING"].to_s
  case env["PATH_INFO"]
  when "/slow"
    ms = Integer(query[/ms=(\d+)/, 1] || "0", 10)
    $stdout.puts("slow #{ms} ms by pid=#{Process.pid}") if ms >= 1000
    $stdout.flush
    sleep(ms / 1000.0)
  when "/hold"
    path = query[/until=([^&]+)/, 1].to_s
    $stdout.puts("held by pid=#{Process.pid}")
    $stdout.flush
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 60
    sleep(0.05) until File.exist?(path) || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  end
  body = "pid=#{Process.pid} warm=#{Mold.warm}\n"
  [200, { "content-type" => "text/plain", "content-length" => body.bytesize.to_s }, [body]]
end)

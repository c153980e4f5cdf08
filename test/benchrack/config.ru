# frozen_string_literal: true

# The Rack app of forkd's Rack benchmark (test/bench/rack_test.go), served the same way by forkd
# (forkd-rack in fork-worker mode) and by Puma's own cluster (`puma --fork-worker`): plain Rack,
# no forkd API and no fork hook, so that both run exactly this code.
#
#   GET /   "hello from pid=<pid>"
#
# At load it allocates BENCHRACK_ALLOC_MB MiB (default 100) and fills them, standing in for a big
# app's loaded code and data, as examples/rack does for the memory tests: the pages are resident,
# and forks share them copy-on-write.

BALLAST = ("\x01".b * (Integer(ENV.fetch("BENCHRACK_ALLOC_MB", "100"), 10) << 20)).freeze

run(lambda do |_env|
  body = "hello from pid=#{Process.pid}\n"
  [200, { "Content-Type" => "text/plain", "Content-Length" => body.bytesize.to_s }, [body]]
end)

# frozen_string_literal: true

# A Forkd.serve server that is not Puma, for the tests: one thread accepts and answers every
# connection with one line, "tiny PID WORKER", then closes it. start/stop as Forkd.serve wants.

require "forkd"

class TinyServer
  def start(listeners)
    @stop_r, @stop_w = IO.pipe
    @thread = Thread.new(listeners, @stop_r) do |ls, stop|
      loop do
        ready, = IO.select([stop, *ls])
        break if ready.include?(stop)

        ready.each do |l|
          conn = l.accept_nonblock(exception: false)
          next if conn == :wait_readable

          conn.gets
          conn.write("tiny #{Process.pid} #{Forkd.worker_index}\n")
          conn.close
          Forkd.add_requests(1)
        end
      end
    end
  end

  def stop
    @stop_w.write("x")
    @thread.join
    @stop_r.close
    @stop_w.close
  end
end

Forkd.serve(TinyServer.new)

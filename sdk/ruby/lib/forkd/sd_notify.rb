# frozen_string_literal: true

require "socket"

module Forkd
  # NOTIFY_SOCKET is set but is neither an absolute path nor an @abstract name. A SystemCallError
  # (EINVAL), so that `rescue SystemCallError` catches every notification that could not be sent.
  class NotifyError < SystemCallError
    Errno = 22 # EINVAL

    def initialize(msg = nil)
      super(msg)
    end
  end

  # sd_notify(3) for forkd workers: datagrams to NOTIFY_SOCKET, and sd_notify_barrier(3).
  #
  # Each message is one datagram of KEY=VALUE lines, sent from a fresh socket as sd_notify does,
  # so nothing stays open between messages and a master that re-execs itself is followed. The
  # kernel attaches the sender's credentials (the master's socket has SO_PASSCRED), which is how
  # the master tells workers apart: no MAINPID= is needed.
  #
  # Outcomes follow sd_notify(3) and go-systemd: false means there is nobody to notify
  # (NOTIFY_SOCKET is unset: not under forkd or a Type=notify service), which is an answer, not an
  # error; true means the datagram was sent; a SystemCallError means it could not be sent
  # (NOTIFY_SOCKET is malformed, or nobody listens there any more).
  module SdNotify
    # A send that blocks longer than this (the master's receive queue is full and nobody reads
    # it) fails instead of hanging the caller.
    SEND_TIMEOUT = 2.0

    module_function

    # The socket address (a packed sockaddr_un) for NOTIFY_SOCKET (or value), nil when it is unset
    # or empty. A leading "@" names the abstract namespace (a leading NUL byte). Raises
    # NotifyError for a value that is neither "/path" nor "@name".
    def address(value = nil)
      value = ENV.fetch("NOTIFY_SOCKET", "") if value.nil?
      return nil if value.empty?

      if value.start_with?("@")
        Socket.sockaddr_un("\0" + value[1..])
      elsif value.start_with?("/")
        Socket.sockaddr_un(value)
      else
        raise NotifyError, "NOTIFY_SOCKET=#{value.inspect} is neither an absolute path nor an @abstract name"
      end
    rescue ArgumentError => e
      raise NotifyError, "NOTIFY_SOCKET=#{value.inspect}: #{e.message}"
    end

    # Send state, one or more KEY=VALUE lines, to NOTIFY_SOCKET as one datagram. ios, when given,
    # travel with it as SCM_RIGHTS. address overrides NOTIFY_SOCKET (same syntax).
    #
    # Returns true when sent, false when there is nobody to notify (NOTIFY_SOCKET unset). Raises
    # SystemCallError when it could not be sent: NotifyError for a malformed NOTIFY_SOCKET,
    # Errno::ECONNREFUSED or Errno::ENOENT when nobody listens there (the master is gone),
    # Errno::ETIMEDOUT when the receiver does not read for 2 seconds.
    def notify(state, ios: [], address: nil)
      addr = self.address(address)
      return false if addr.nil?

      data = state.to_s.b
      sock = Socket.new(:UNIX, :DGRAM)
      begin
        sock.close_on_exec = true
        controls = ios.empty? ? [] : [Socket::AncillaryData.unix_rights(*ios)]
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + SEND_TIMEOUT
        loop do
          result = sock.sendmsg_nonblock(data, 0, addr, *controls, exception: false)
          break unless result == :wait_writable

          left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
          if left <= 0 || !IO.select(nil, [sock], nil, left)
            raise Errno::ETIMEDOUT, "sd_notify: the receiver did not read for #{SEND_TIMEOUT}s"
          end
        end
      ensure
        sock.close
      end
      true
    end

    # sd_notify_barrier(3): returns once the receiver has processed every earlier notification.
    #
    # Sends BARRIER=1 with the write end of a pipe and waits until the receiver has closed it
    # (forkd closes every descriptor that arrives with a notification). A short-lived helper that
    # notifies for its worker calls this before exiting, so it is still alive when forkd traces
    # the sender back to the worker.
    #
    # Returns true when synchronized, false when there is nobody to notify. Raises
    # Errno::ETIMEDOUT when the receiver did not close the pipe within timeout seconds, and
    # SystemCallError as notify does.
    def notify_barrier(timeout: 5.0, address: nil)
      return false if self.address(address).nil?

      r, w = IO.pipe
      begin
        begin
          notify("BARRIER=1", ios: [w], address: address)
        ensure
          w.close
        end
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
        loop do
          left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
          raise Errno::ETIMEDOUT, "notify barrier: no answer in #{timeout}s" if left <= 0
          next unless IO.select([r], nil, nil, left)

          chunk = r.read_nonblock(64, exception: false)
          return true if chunk.nil? # end of file: every copy of the write end is closed
        end
      ensure
        r.close
      end
    end
  end
end

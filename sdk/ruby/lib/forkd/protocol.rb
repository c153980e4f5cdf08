# frozen_string_literal: true

require "json"
require "socket"

module Forkd
  # The control channel of docs/protocol.md section 3: one JSON object per SOCK_SEQPACKET packet.
  #
  # A message is a UTF-8 JSON object of at most 64 KiB with "v" (the sender's protocol version),
  # "op" and, on requests and their replies, an integer "seq". Descriptors travel with a message
  # as SCM_RIGHTS (a spawn carries the new worker's channel).
  #
  # Nothing here raises on what the peer sends: Channel#recv turns a packet that is not a valid
  # message into an Invalid, which says why and carries the seq when one could be read, so the
  # caller can answer "error" and go on. Only the local socket failing raises (SystemCallError).
  module Protocol
    # The protocol version this SDK speaks.
    VERSION = 1

    # The largest message, in bytes.
    MAX_MESSAGE = 64 * 1024

    # Every op of version 1. A known op with missing fields is still a valid message; checking the
    # fields an op needs is the receiver's job.
    OPS = %w[
      hello welcome refuse
      spawn spawned spawn_failed
      pause paused resume resumed
      mold molded mold_failed
      error stdio
    ].freeze

    # At most this many descriptors are accepted with one packet; more are a protocol error (and
    # are closed, as are all descriptors of a packet that is not a valid message).
    MAX_FDS = 4

    # A packet that is not a valid message. seq is its seq when one could be read, else nil.
    class ProtocolError < StandardError
      attr_reader :reason, :seq

      def initialize(reason, seq = nil)
        super(reason)
        @reason = reason
        @seq = seq
      end
    end

    # What Channel#recv returns for a packet that is not a valid message: reason says why; seq is
    # the packet's seq when it had a readable one (answer "error" then), else nil (ignore it).
    # Descriptors that came with it have been closed.
    Invalid = Struct.new(:reason, :seq)

    module_function

    def int?(value)
      value.is_a?(Integer)
    end

    # The packet (a binary String) for msg, a Hash with at least "op" (String or Symbol keys);
    # "v" is added when missing. Raises ArgumentError when msg has no String op, cannot be
    # serialized, or is larger than MAX_MESSAGE.
    def encode(msg)
      unless msg.is_a?(Hash)
        raise ArgumentError, "a message is a Hash with a String op: #{msg.inspect}"
      end
      msg = msg.to_h { |k, v| [k.to_s, v] }
      raise ArgumentError, "a message is a Hash with a String op: #{msg.inspect}" unless msg["op"].is_a?(String)

      msg = { "v" => VERSION }.merge(msg) unless msg.key?("v")
      begin
        data = JSON.generate(msg)
      rescue JSON::GeneratorError, Encoding::UndefinedConversionError, Encoding::InvalidByteSequenceError => e
        raise ArgumentError, "cannot encode #{msg["op"].inspect}: #{e.message}"
      end
      data = data.b
      if data.bytesize > MAX_MESSAGE
        raise ArgumentError, "message #{msg["op"].inspect} is #{data.bytesize} bytes, more than #{MAX_MESSAGE}"
      end

      data
    end

    # The message (a Hash with String keys) in one packet, or raises ProtocolError saying why it
    # is not one. A valid message is a UTF-8 JSON object of at most MAX_MESSAGE bytes with an
    # Integer "v" and a String "op"; its "seq", when present, is an Integer. An unknown op is still
    # a message: whether to answer it with "error" is the receiver's choice (it should, when it has
    # a seq).
    def decode(data)
      raise ProtocolError, "message longer than #{MAX_MESSAGE} bytes" if data.bytesize > MAX_MESSAGE
      raise ProtocolError, "empty packet" if data.empty?

      text = data.dup.force_encoding(Encoding::UTF_8)
      raise ProtocolError, "not UTF-8" unless text.valid_encoding?

      begin
        msg = JSON.parse(text)
      rescue JSON::ParserError, SystemStackError => e
        raise ProtocolError, "not JSON: #{e.message.lines.first.to_s.strip[0, 200]}"
      end
      raise ProtocolError, "not a JSON object" unless msg.is_a?(Hash)

      seq = msg["seq"]
      raise ProtocolError, "seq is not an integer" if !seq.nil? && !int?(seq)
      raise ProtocolError.new("no v", seq) unless msg.key?("v")
      raise ProtocolError.new("v is not an integer", seq) unless int?(msg["v"])
      raise ProtocolError.new("no op", seq) unless msg.key?("op")
      raise ProtocolError.new("op is not a string", seq) unless msg["op"].is_a?(String)

      msg
    end

    def seq_of(data)
      seq = JSON.parse(data.dup.force_encoding(Encoding::UTF_8))["seq"]
      int?(seq) ? seq : nil
    rescue StandardError
      nil
    end

    def close_all(ios)
      ios.each do |io|
        io.close
      rescue IOError, SystemCallError
        nil
      end
    end

    # One end of a control channel: a connected AF_UNIX SOCK_SEQPACKET socket. It owns the
    # socket; #close closes it.
    class Channel
      attr_reader :sock

      def initialize(sock)
        @sock = sock
      end

      # Take over descriptor fd, which must be an AF_UNIX SOCK_SEQPACKET socket. Raises
      # SystemCallError (ENOTSOCK, EBADF) or ArgumentError (another kind of socket). The
      # descriptor is made close-on-exec, so programs the worker starts do not get it.
      def self.from_fd(fd)
        sock = Socket.for_fd(fd)
        begin
          type = sock.getsockopt(:SOCKET, :TYPE).int
          family = sock.local_address.afamily
        rescue SystemCallError
          sock.autoclose = false
          raise
        end
        unless family == Socket::AF_UNIX && type == Socket::SOCK_SEQPACKET
          sock.autoclose = false
          raise ArgumentError, "fd #{fd} is not a unix SOCK_SEQPACKET socket (family #{family}, type #{type})"
        end
        sock.close_on_exec = true
        new(sock)
      end

      def fileno
        @sock.fileno
      end

      def to_io
        @sock
      end

      def closed?
        @sock.closed?
      end

      def close
        @sock.close unless @sock.closed?
      end

      # Send msg (see Protocol.encode) as one packet, with ios (IO objects) as SCM_RIGHTS.
      # Raises SystemCallError, IOError or ArgumentError.
      def send_message(msg, ios = [])
        data = Protocol.encode(msg)
        if ios.empty?
          @sock.sendmsg(data)
        else
          @sock.sendmsg(data, 0, nil, Socket::AncillaryData.unix_rights(*ios))
        end
        true
      end

      # Receive one packet. Returns [msg, ios]:
      #
      # - [Hash, ios]: a valid message (see Protocol.decode) and the descriptors that came with
      #   it, as IO objects (sockets are Socket objects) the caller now owns (close-on-exec);
      # - [Invalid, []]: a packet that is not a valid message; its descriptors have been closed;
      # - [nil, []]: end of file: the peer closed its end (or reset the connection).
      #
      # Blocks until a packet arrives. Raises SystemCallError only when the local socket fails
      # otherwise.
      def recv
        begin
          data, _addr, flags, *controls = @sock.recvmsg(MAX_MESSAGE + 1, 0, 512, scm_rights: true)
        rescue Errno::ECONNRESET, Errno::ECONNABORTED
          return [nil, []]
        end
        ios = []
        controls.each do |c|
          ios.concat(c.unix_rights || []) if c.cmsg_is?(:SOCKET, :RIGHTS)
        end
        ios.each { |io| io.close_on_exec = true }
        if data.empty? && controls.empty?
          return [nil, []] if peer_closed?

          return [Invalid.new("empty packet"), []]
        end
        begin
          raise ProtocolError, "message longer than #{MAX_MESSAGE} bytes" if flags.to_i & Socket::MSG_TRUNC != 0
          if flags.to_i & Socket::MSG_CTRUNC != 0 || ios.size > MAX_FDS
            raise ProtocolError.new("more than #{MAX_FDS} descriptors", Protocol.seq_of(data))
          end

          msg = Protocol.decode(data)
        rescue ProtocolError => e
          Protocol.close_all(ios)
          return [Invalid.new(e.reason, e.seq), []]
        end
        [msg, ios]
      end

      private

      # recvmsg returns "" both for end of file and for an empty packet. At end of file every
      # later read returns "" at once; after an empty packet, a peek finds the next packet or
      # nothing. (Two empty packets in a row are taken for end of file: no peer sends them.)
      def peer_closed?
        peek = @sock.recv_nonblock(1, Socket::MSG_PEEK, exception: false)
        peek.nil? || peek == ""
      rescue Errno::ECONNRESET, Errno::ECONNABORTED
        true
      end
    end
  end
end

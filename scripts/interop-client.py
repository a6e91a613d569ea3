#!/usr/bin/env python3
"""gRPC's standard interop test cases, run by Python's grpcio (the C core) against a server of
grpc.testing.TestService (Protos/testing/test.proto).

Usage: scripts/interop-client.py --addr host:port --cases empty_unary,large_unary,...

Generates the Python stubs from Protos/testing/test.proto with grpcio-tools into a temporary
directory, runs the cases in the order given on one channel, prints "PASS <case>" or
"FAIL <case>: <why>" for each, and exits 1 if any failed (2 for bad usage or a missing grpcio).
Install grpcio and grpcio-tools with scripts/install-test-deps (or pip install grpcio
grpcio-tools).
"""

import argparse
import importlib
import os
import sys
import tempfile
import threading

try:
    import grpc
    from grpc_tools import protoc
except ImportError as error:
    print(
        f"interop-client.py: {error}; install grpcio and grpcio-tools for {sys.executable} "
        "(scripts/install-test-deps, or pip install grpcio grpcio-tools)",
        file=sys.stderr,
    )
    sys.exit(2)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The sizes and values the interop description prescribes.
LARGE_REQUEST_SIZE = 271828
LARGE_RESPONSE_SIZE = 314159
STREAMING_REQUEST_SIZES = (27182, 8, 1828, 45904)  # sum 74922
STREAMING_RESPONSE_SIZES = (31415, 9, 2653, 58979)
ECHO_INITIAL = ("x-grpc-test-echo-initial", "test_initial_metadata_value")
ECHO_TRAILING = ("x-grpc-test-echo-trailing-bin", b"\xab\xab\xab")
STATUS_MESSAGE = "test status message"
SPECIAL_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"

# Every call's deadline, so that no case waits forever.
CALL_TIMEOUT = 20.0


class CaseFailed(Exception):
    """A case's assertion did not hold."""


def load_stubs(directory):
    """Generates test_pb2 and test_pb2_grpc from Protos/testing/test.proto into directory and
    imports them."""
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={os.path.join(ROOT, 'Protos')}",
            f"--python_out={directory}",
            f"--grpc_python_out={directory}",
            "testing/test.proto",
        ]
    )
    if status != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({status})")
    sys.path.insert(0, directory)
    return (
        importlib.import_module("testing.test_pb2"),
        importlib.import_module("testing.test_pb2_grpc"),
    )


class Pipe:
    """A request iterator fed while the call runs: next() blocks until add() or close()."""

    def __init__(self):
        self._condition = threading.Condition()
        self._values = []
        self._open = True

    def __iter__(self):
        return self

    def __next__(self):
        with self._condition:
            while not self._values and self._open:
                self._condition.wait()
            if self._values:
                return self._values.pop(0)
            raise StopIteration()

    def add(self, value):
        with self._condition:
            self._values.append(value)
            self._condition.notify()

    def close(self):
        with self._condition:
            self._open = False
            self._condition.notify()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def expect(condition, message):
    if not condition:
        raise CaseFailed(message)


def expect_status(error, code, message=None):
    expect(
        error.code() == code,
        f"status {error.code()} ({error.details()!r}), want {code}",
    )
    if message is not None:
        expect(
            error.details() == message,
            f"status message {error.details()!r}, want {message!r}",
        )


def expect_payload(payload, size):
    expect(len(payload.body) == size, f"payload of {len(payload.body)} bytes, want {size}")
    expect(payload.body == bytes(size), "payload is not all zeros")


class Cases:
    """The cases, each a method named after it."""

    def __init__(self, channel, pb, pb_grpc):
        self.pb = pb
        self.stub = pb_grpc.TestServiceStub(channel)
        self.unimplemented = pb_grpc.UnimplementedServiceStub(channel)

    def payload(self, size):
        return self.pb.Payload(body=bytes(size))

    def duplex_request(self, response_size, request_size):
        return self.pb.StreamingOutputCallRequest(
            response_parameters=[self.pb.ResponseParameters(size=response_size)],
            payload=self.payload(request_size),
        )

    def empty_unary(self):
        response = self.stub.EmptyCall(self.pb.Empty(), timeout=CALL_TIMEOUT)
        expect(isinstance(response, self.pb.Empty), f"response {response!r} is not Empty")

    def large_unary(self):
        response = self.stub.UnaryCall(
            self.pb.SimpleRequest(
                response_size=LARGE_RESPONSE_SIZE,
                payload=self.payload(LARGE_REQUEST_SIZE),
            ),
            timeout=CALL_TIMEOUT,
        )
        expect_payload(response.payload, LARGE_RESPONSE_SIZE)

    def client_streaming(self):
        requests = (
            self.pb.StreamingInputCallRequest(payload=self.payload(size))
            for size in STREAMING_REQUEST_SIZES
        )
        response = self.stub.StreamingInputCall(requests, timeout=CALL_TIMEOUT)
        want = sum(STREAMING_REQUEST_SIZES)
        expect(
            response.aggregated_payload_size == want,
            f"aggregated_payload_size {response.aggregated_payload_size}, want {want}",
        )

    def server_streaming(self):
        request = self.pb.StreamingOutputCallRequest(
            response_parameters=[
                self.pb.ResponseParameters(size=size) for size in STREAMING_RESPONSE_SIZES
            ]
        )
        responses = list(self.stub.StreamingOutputCall(request, timeout=CALL_TIMEOUT))
        expect(
            len(responses) == len(STREAMING_RESPONSE_SIZES),
            f"{len(responses)} responses, want {len(STREAMING_RESPONSE_SIZES)}",
        )
        for response, size in zip(responses, STREAMING_RESPONSE_SIZES):
            expect_payload(response.payload, size)

    def ping_pong(self):
        with Pipe() as pipe:
            responses = self.stub.FullDuplexCall(pipe, timeout=CALL_TIMEOUT)
            for response_size, request_size in zip(
                STREAMING_RESPONSE_SIZES, STREAMING_REQUEST_SIZES
            ):
                pipe.add(self.duplex_request(response_size, request_size))
                expect_payload(next(responses).payload, response_size)
            pipe.close()
            rest = list(responses)
            expect(not rest, f"{len(rest)} responses after the last one asked for")

    def empty_stream(self):
        responses = list(self.stub.FullDuplexCall(iter(()), timeout=CALL_TIMEOUT))
        expect(not responses, f"{len(responses)} responses, want none")

    def timeout_on_sleeping_server(self):
        with Pipe() as pipe:
            responses = self.stub.FullDuplexCall(pipe, timeout=0.001)
            pipe.add(self.pb.StreamingOutputCallRequest(payload=self.payload(27182)))
            try:
                next(responses)
            except grpc.RpcError as error:
                expect_status(error, grpc.StatusCode.DEADLINE_EXCEEDED)
            else:
                raise CaseFailed("a response arrived, want DEADLINE_EXCEEDED")

    def cancel_after_begin(self):
        with Pipe() as pipe:
            future = self.stub.StreamingInputCall.future(pipe, timeout=CALL_TIMEOUT)
            future.cancel()
            expect(future.cancelled(), "the call was not cancelled")
            expect(
                future.code() == grpc.StatusCode.CANCELLED,
                f"status {future.code()}, want CANCELLED",
            )

    def cancel_after_first_response(self):
        with Pipe() as pipe:
            responses = self.stub.FullDuplexCall(pipe, timeout=CALL_TIMEOUT)
            pipe.add(self.duplex_request(31415, 27182))
            expect_payload(next(responses).payload, 31415)
            responses.cancel()
            try:
                next(responses)
            except grpc.RpcError as error:
                expect_status(error, grpc.StatusCode.CANCELLED)
            else:
                raise CaseFailed("a second response arrived, want CANCELLED")

    def echo_status(self, message, duplex):
        status = self.pb.EchoStatus(code=2, message=message)
        try:
            self.stub.UnaryCall(self.pb.SimpleRequest(response_status=status), timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            expect_status(error, grpc.StatusCode.UNKNOWN, message)
        else:
            raise CaseFailed("UnaryCall succeeded, want UNKNOWN")
        if not duplex:
            return
        requests = iter([self.pb.StreamingOutputCallRequest(response_status=status)])
        try:
            list(self.stub.FullDuplexCall(requests, timeout=CALL_TIMEOUT))
        except grpc.RpcError as error:
            expect_status(error, grpc.StatusCode.UNKNOWN, message)
        else:
            raise CaseFailed("FullDuplexCall succeeded, want UNKNOWN")

    def status_code_and_message(self):
        self.echo_status(STATUS_MESSAGE, duplex=True)

    def special_status_message(self):
        self.echo_status(SPECIAL_MESSAGE, duplex=False)

    @staticmethod
    def expect_echoed(call, what):
        initial = [value for key, value in call.initial_metadata() if key == ECHO_INITIAL[0]]
        expect(
            initial == [ECHO_INITIAL[1]],
            f"{what}: initial metadata {ECHO_INITIAL[0]} = {initial!r}, want [{ECHO_INITIAL[1]!r}]",
        )
        trailing = [value for key, value in call.trailing_metadata() if key == ECHO_TRAILING[0]]
        expect(
            trailing == [ECHO_TRAILING[1]],
            f"{what}: trailing metadata {ECHO_TRAILING[0]} = {trailing!r}, "
            f"want [{ECHO_TRAILING[1]!r}]",
        )

    def custom_metadata(self):
        metadata = (ECHO_INITIAL, ECHO_TRAILING)
        response, call = self.stub.UnaryCall.with_call(
            self.pb.SimpleRequest(
                response_size=LARGE_RESPONSE_SIZE,
                payload=self.payload(LARGE_REQUEST_SIZE),
            ),
            metadata=metadata,
            timeout=CALL_TIMEOUT,
        )
        expect_payload(response.payload, LARGE_RESPONSE_SIZE)
        self.expect_echoed(call, "UnaryCall")

        requests = iter([self.duplex_request(LARGE_RESPONSE_SIZE, LARGE_REQUEST_SIZE)])
        responses = self.stub.FullDuplexCall(requests, metadata=metadata, timeout=CALL_TIMEOUT)
        received = list(responses)
        expect(len(received) == 1, f"FullDuplexCall: {len(received)} responses, want 1")
        expect_payload(received[0].payload, LARGE_RESPONSE_SIZE)
        self.expect_echoed(responses, "FullDuplexCall")

    def unimplemented_method(self):
        try:
            self.stub.UnimplementedCall(self.pb.Empty(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            expect_status(error, grpc.StatusCode.UNIMPLEMENTED)
        else:
            raise CaseFailed("the call succeeded, want UNIMPLEMENTED")

    def unimplemented_service(self):
        try:
            self.unimplemented.UnimplementedCall(self.pb.Empty(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            expect_status(error, grpc.StatusCode.UNIMPLEMENTED)
        else:
            raise CaseFailed("the call succeeded, want UNIMPLEMENTED")


CASES = (
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "timeout_on_sleeping_server",
    "cancel_after_begin",
    "cancel_after_first_response",
    "status_code_and_message",
    "special_status_message",
    "custom_metadata",
    "unimplemented_method",
    "unimplemented_service",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="host:port of the server")
    parser.add_argument("--cases", required=True, help="comma-separated case names")
    arguments = parser.parse_args()
    names = arguments.cases.split(",")
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)}")

    with tempfile.TemporaryDirectory(prefix="interop-stubs-") as directory:
        pb, pb_grpc = load_stubs(directory)
        failed = 0
        with grpc.insecure_channel(arguments.addr) as channel:
            grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
            cases = Cases(channel, pb, pb_grpc)
            for name in names:
                try:
                    getattr(cases, name)()
                except Exception as error:  # noqa: BLE001 - any failure fails only this case
                    failed += 1
                    why = f"{type(error).__name__}: {error}".replace("\n", "\\n")
                    print(f"FAIL {name}: {why}", flush=True)
                else:
                    print(f"PASS {name}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

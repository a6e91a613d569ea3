#!/usr/bin/env python3
"""Floor for etcd prefix reads: how fast Python's grpcio (gRPC's C core) reads a prefix range.

Times KV.Range(key=prefix, range_end=prefix end) on one channel, the response fully received and
deserialized, and prints one JSON line, to compare the project's Swift client with. The stubs are
generated at run time from the repository's Protos/etcd/etcd.proto.

  python3 etcd_range_floor.py --endpoint 127.0.0.1:2379 --prefix bench/get10000/ \
      --fill 10000 --value-bytes 75 --expect 10000

Needs `pip install grpcio grpcio-tools` (scripts/install-test-deps installs them).
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "Protos", "etcd", "etcd.proto")


def fail(message):
    print(f"etcd_range_floor: {message}", file=sys.stderr)
    sys.exit(1)


def load_stubs(workdir):
    """Compiles etcd.proto into `workdir` with grpc_tools.protoc; returns (pb2, pb2_grpc)."""
    from grpc_tools import protoc

    proto = os.path.normpath(PROTO)
    if not os.path.isfile(proto):
        fail(f"proto not found: {proto}")
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{os.path.dirname(proto)}",
        f"--python_out={workdir}",
        f"--grpc_python_out={workdir}",
        proto,
    ])
    if status != 0:
        fail(f"grpc_tools.protoc failed on {proto} (exit {status})")
    sys.path.insert(0, workdir)
    import etcd_pb2
    import etcd_pb2_grpc
    return etcd_pb2, etcd_pb2_grpc


def prefix_end(prefix):
    """etcd's prefix end (clientv3.GetPrefixRangeEnd): the last byte below 0xff incremented, the
    bytes after it dropped; b"\\0" (to the end of the key space) when there is none."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"


def registry_value(index, size):
    """A registry-like JSON value of exactly `size` bytes (padded in a "meta" field)."""
    base = '{"service":"bench","address":"10.%d.%d.%d:8080","meta":"' % (
        index >> 16 & 255, index >> 8 & 255, index & 255)
    pad = size - len(base) - 2
    if pad < 0:
        return b"v" * size
    return (base + "x" * pad + '"}').encode()


def fill(stub, pb2, prefix, count, value_bytes, window=256):
    """Puts `count` keys `<prefix><i>`, keeping up to `window` Put calls in flight."""
    pending = []
    for index in range(count):
        request = pb2.PutRequest(key=prefix + str(index).encode(), value=registry_value(index, value_bytes))
        pending.append(stub.Put.future(request, timeout=30))
        if len(pending) >= window:
            pending.pop(0).result()
    for future in pending:
        future.result()


def percentile(sorted_samples, fraction):
    """Nearest rank, as the Swift benchmark's LatencySummary."""
    rank = math.ceil(fraction * len(sorted_samples))
    return sorted_samples[min(max(rank, 1), len(sorted_samples)) - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="etcd client address, host:port")
    parser.add_argument("--prefix", required=True, help="key prefix to read")
    parser.add_argument("--trials", type=int, default=30, help="timed Range calls (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed Range calls first (default 3)")
    parser.add_argument("--fill", type=int, default=0, metavar="COUNT", help="first put COUNT keys <prefix><i>")
    parser.add_argument("--value-bytes", type=int, default=75, metavar="B", help="value size for --fill (default 75)")
    parser.add_argument("--expect", type=int, help="fail unless every Range returns this many keys")
    parser.add_argument("--serializable", action="store_true", help="serializable reads (no quorum round)")
    args = parser.parse_args()
    if args.trials < 1 or args.warmup < 0 or args.fill < 0 or args.value_bytes < 0:
        fail("--trials must be >= 1; --warmup, --fill and --value-bytes >= 0")

    try:
        import grpc
        import grpc_tools  # noqa: F401  (checked here for the message below)
    except ImportError as error:
        fail(f"{error}: run `pip install grpcio grpcio-tools` (or scripts/install-test-deps) "
             f"for {sys.executable}")

    with tempfile.TemporaryDirectory(prefix="etcd-floor-stubs-") as workdir:
        pb2, pb2_grpc = load_stubs(workdir)

    prefix = args.prefix.encode()
    if not prefix:
        fail("--prefix must not be empty")
    options = [("grpc.max_receive_message_length", 64 << 20)]
    try:
        with grpc.insecure_channel(args.endpoint, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            stub = pb2_grpc.KVStub(channel)
            if args.fill:
                fill(stub, pb2, prefix, args.fill, args.value_bytes)
            request = pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), serializable=args.serializable)

            def read():
                # The unary call returns the parsed RangeResponse; counting its kvs walks the
                # repeated field, so the whole response is received and deserialized.
                count = len(stub.Range(request, timeout=60).kvs)
                if args.expect is not None and count != args.expect:
                    fail(f"Range of {args.prefix!r} returned {count} keys, expected {args.expect}")
                return count

            for _ in range(args.warmup):
                read()
            samples = []
            for _ in range(args.trials):
                begin = time.perf_counter()
                keys = read()
                samples.append((time.perf_counter() - begin) * 1000)
    except grpc.FutureTimeoutError:
        fail(f"no connection to etcd at {args.endpoint} within 10 s")
    except grpc.RpcError as error:
        fail(f"etcd at {args.endpoint}: {error.code().name}: {error.details()}")

    samples.sort()
    print(json.dumps({
        "kind": "grpcio_range",
        "keys": keys,
        "trials": args.trials,
        "p50_ms": round(percentile(samples, 0.50), 3),
        "p90_ms": round(percentile(samples, 0.90), 3),
        "min_ms": round(samples[0], 3),
        "grpcio_version": grpc.__version__,
    }))


if __name__ == "__main__":
    main()

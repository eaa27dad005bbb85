"""What one Fetch costs the broker in Python, without sockets: where request handling time goes.

    .venv/bin/python bench/fetch_path.py [--topics 17] [--partitions 8] [--iterations 2000]

A standalone Broker (temporary log dir) with TOPICS x PARTITIONS partitions, driven through
broker.handlers as the server drives it, timing per request:

- an incremental fetch (KIP-227) of a session holding every partition, none of them changed
  (a follower's idle round trip: resolve the session, scan it, nothing to send);
- a sessionless fetch of 3 partitions answered in full and encoded (a librdkafka consumer's);
- decoding that consumer fetch request's frame with kio.

Compare with the per-request CPU the cluster spends (docs/benchmarks.md, "Harness"): what is not
here is the event loop, the sockets and the kernel.
"""
from __future__ import annotations

import argparse
import datetime
import io
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kio.schema.fetch.v11.request import FetchPartition, FetchRequest, FetchTopic  # noqa: E402
from kio.serial import entity_writer  # noqa: E402

from broker import handlers, protocol  # noqa: E402
from broker.config import BrokerConfig  # noqa: E402
from broker.core import Broker  # noqa: E402
from broker.protocol import Request  # noqa: E402

VERSION = 11


def fetch_body(session_id: int, epoch: int, keys) -> FetchRequest:
    topics: dict[str, list] = {}
    for t, p in keys:
        topics.setdefault(t, []).append(FetchPartition(partition=p, current_leader_epoch=-1, fetch_offset=0,
                                                       log_start_offset=0, partition_max_bytes=1 << 20))
    return FetchRequest(replica_id=-1, max_wait=datetime.timedelta(0), min_bytes=1, max_bytes=1 << 26,
                        isolation_level=0, session_id=session_id, session_epoch=epoch,
                        topics=tuple(FetchTopic(topic=t, partitions=tuple(ps)) for t, ps in topics.items()),
                        forgotten_topics_data=(), rack_id="")


def per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topics", type=int, default=17)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        broker = Broker(BrokerConfig.load(None, [f"log.dirs={d}", "listeners=PLAINTEXT://127.0.0.1:0"]))
        for t in range(args.topics):
            broker.create_topic(f"acked-queue-{t}", args.partitions, 1, {})
        keys = sorted(broker.partitions)
        first = Request(1, VERSION, 1, "bench", fetch_body(0, 0, keys))
        ctx = handlers.fetch_context(broker, first)
        ctx.sent(handlers.fetch(broker, first, ctx).included)
        session = ctx.session_id

        def incremental(i):
            req = Request(1, VERSION, i, "bench", fetch_body(session, i + 1, []))
            c = handlers.fetch_context(broker, req)
            c.sent(handlers.fetch(broker, req, c).included)

        consumer = Request(1, VERSION, 1, "bench", fetch_body(0, -1, keys[:3]))

        def sessionless(i):
            c = handlers.fetch_context(broker, consumer)
            handlers.fetch(broker, consumer, c).encode(consumer)

        buf = io.BytesIO()
        buf.write(struct.pack(">hhih", 1, VERSION, 7, 5) + b"bench")
        entity_writer(FetchRequest)(buf, consumer.body)
        frame = buf.getvalue()
        n = args.iterations
        print(f"{len(keys)} partitions, {n} iterations each")
        print(f"incremental fetch, session of {len(keys)} idle partitions: {per_call(incremental, n):.0f} us")
        print(f"sessionless fetch of 3 partitions, answered and encoded:  {per_call(sessionless, n):.0f} us")
        print(f"decoding that consumer fetch request (kio):                {per_call(lambda i: protocol.decode_request(frame), n):.0f} us")
        broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

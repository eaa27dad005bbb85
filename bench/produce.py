"""Produce/consume throughput of acked-broker with the confluent-kafka client.

Starts one broker process on a free 127.0.0.1 port in a temporary directory
(or, with --brokers 3, a local cluster: a ZooKeeper and 3 broker processes,
topics with replication factor 3; or uses --bootstrap), produces --messages
values of --value-bytes with the producer's default batching for each --acks
setting, and reports messages/s, p50/p99 acknowledgement latency (produce() to
delivery report) and the consumer's messages/s reading the topic back.

    .venv/bin/python bench/produce.py [--messages 300000] [--acks 1,all]
    .venv/bin/python bench/produce.py --brokers 3 [--acks 1,all]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(workdir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cfg = os.path.join(workdir, "server.properties")
    with open(cfg, "w") as f:
        f.write(f"listeners=PLAINTEXT://127.0.0.1:{port}\nlog.dirs={workdir}/data\n")
    exe = os.path.join(os.path.dirname(sys.executable), "acked-broker")
    proc = subprocess.Popen([exe, cfg], stderr=open(os.path.join(workdir, "broker.log"), "wb"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("broker did not start; see " + workdir)


def start_cluster(workdir: str, brokers: int):
    """ZooKeeper + `brokers` broker processes on 127.0.0.1 (clusters/local.py); returns (cluster, bootstrap)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from pathlib import Path

    from clusters.base import ClusterSpec
    from clusters.local import LocalCluster
    cluster = LocalCluster(ClusterSpec(backend="local", nodes=brokers, zookeeper="dedicated",
                                       work_dir=Path(workdir), run_id="bench",
                                       broker_config={"offsets.topic.num.partitions": "1"}))
    cluster.start()
    return cluster, cluster.bootstrap_servers()


def create_topic(admin: AdminClient, topic: str, partitions: int, rf: int) -> None:
    """Create and wait until every partition has a leader, so the figures do not include the election."""
    admin.create_topics([NewTopic(topic, partitions, rf)])[topic].result(15)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None and md.error is None and len(md.partitions) == partitions and all(
                p.leader >= 0 and p.error is None and len(p.isrs) == rf for p in md.partitions.values()):
            return
        time.sleep(0.1)
    raise SystemExit(f"topic {topic}: partitions without a leader or a full ISR after 30 s")


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def bench_produce(bootstrap: str, topic: str, n: int, value_bytes: int, acks: str,
                  rate: float = 0) -> dict:
    """Produce n values; rate > 0 paces the producer at that many messages/s
    (latency without client-side queueing), rate 0 sends as fast as possible."""
    latencies: list[float] = []
    errors = 0

    def on_delivery(err, msg):
        nonlocal errors
        if err is not None:
            errors += 1
        else:
            latencies.append(msg.latency())

    p = Producer({"bootstrap.servers": bootstrap, "acks": acks})
    value = b"x" * value_bytes
    t0 = time.perf_counter()
    for i in range(n):
        if rate and i % 100 == 0:
            ahead = t0 + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            p.poll(0)
        while True:
            try:
                p.produce(topic, value, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.01)
        if len(latencies) % 1000 == 0:
            p.poll(0)
    p.flush(120)
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"acks": acks, "rate": rate or "max", "messages": n, "errors": errors, "seconds": round(elapsed, 3),
            "msgs_per_s": round(n / elapsed), "mb_per_s": round(n * value_bytes / elapsed / 1e6, 2),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2)}


def bench_consume(bootstrap: str, topic: str, partitions: int, n: int) -> dict:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        got += sum(1 for m in c.consume(10000, 1.0) if m.error() is None)
    elapsed = time.perf_counter() - t0
    c.close()
    return {"messages": got, "seconds": round(elapsed, 3), "msgs_per_s": round(got / elapsed)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--acks", default="1,all", help="comma-separated acks settings to run")
    ap.add_argument("--paced-rate", type=float, default=10_000,
                    help="also measure ack latency at this steady rate (msg/s; 0 to skip)")
    ap.add_argument("--brokers", type=int, default=1,
                    help="1: one standalone broker; N>1: ZooKeeper + N brokers, replication factor N")
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="acked-bench-")
    proc = cluster = None
    rf = args.brokers
    try:
        bootstrap = args.bootstrap
        if bootstrap is None and args.brokers > 1:
            cluster, bootstrap = start_cluster(workdir, args.brokers)
        elif bootstrap is None:
            proc, bootstrap = start_broker(workdir)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        results = {"produce": [], "consume": []}
        for acks in args.acks.split(","):
            topic = f"bench-acks-{acks}-{int(time.time())}"
            create_topic(admin, topic, args.partitions, rf)
            r = bench_produce(bootstrap, topic, args.messages, args.value_bytes, acks)
            r["brokers"], r["replication_factor"] = args.brokers, rf
            results["produce"].append(r)
            c = bench_consume(bootstrap, topic, args.partitions, args.messages)
            c["topic_acks"] = acks
            results["consume"].append(c)
            if not args.json:
                print(f"produce acks={acks}: {r['msgs_per_s']:,} msg/s ({r['mb_per_s']} MB/s), "
                      f"ack latency p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms, errors {r['errors']}")
                print(f"consume: {c['msgs_per_s']:,} msg/s ({c['messages']:,} messages)")
            if args.paced_rate:
                topic += "-paced"
                create_topic(admin, topic, args.partitions, rf)
                n = int(min(args.messages, args.paced_rate * 10))
                r = bench_produce(bootstrap, topic, n, args.value_bytes, acks, args.paced_rate)
                results["produce"].append(r)
                if not args.json:
                    print(f"produce acks={acks} paced at {args.paced_rate:,.0f} msg/s: "
                          f"ack latency p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms, errors {r['errors']}")
        if args.json:
            print(json.dumps(results))
        del admin  # close the client before the broker goes away
    finally:
        if cluster is not None:
            cluster.teardown()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

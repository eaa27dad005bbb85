"""What faultfs (nemesis/faultfs.py) costs the broker with no fault active: side by side with the plain directory.

One standalone broker at a time on 127.0.0.1, its log.dirs either a plain directory or a faultfs mount of one
(with the nodes' writeback, clusters.remote.FAULTFS_WRITEBACK_S), alternating plain / faultfs for --rounds
rounds in one run, so both see the same machine. Each measures produce msg/s at full speed, ack latency paced,
and consume msg/s reading the topic back (bench/produce.py's measurements).

    .venv/bin/python bench/faultfs_cost.py [--rounds 3] [--messages 200000] [--acks 1] [--paced-rate 5000]

Needs /dev/fuse, fusermount3 and mfusepy on the host (the test extra), as tests/test_faultfs.py does.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from confluent_kafka.admin import AdminClient  # noqa: E402

from clusters.remote import FAULTFS_WRITEBACK_S  # noqa: E402
from produce import bench_consume, bench_produce, create_topic, start_broker  # noqa: E402
from sidebyside import side_by_side  # noqa: E402

FAULTFS = str(REPO / "nemesis" / "faultfs.py")


def mount(workdir: str) -> subprocess.Popen:
    backing, mnt = os.path.join(workdir, "backing"), os.path.join(workdir, "data")
    os.makedirs(backing)
    os.makedirs(mnt)
    log = open(os.path.join(workdir, "faultfs.log"), "w+")
    proc = subprocess.Popen([sys.executable, FAULTFS, "mount", backing, mnt, "--control",
                             os.path.join(workdir, "ctl.sock"), "--writeback", str(FAULTFS_WRITEBACK_S)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        log.seek(0)
        if any(line.startswith("mounted") for line in log):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    log.seek(0)
    raise SystemExit(f"faultfs did not mount:\n{log.read()}")


def one(mode: str, args) -> dict:
    workdir = tempfile.mkdtemp(prefix=f"acked-fscost-{mode}-", dir="/tmp")
    fs = mount(workdir) if mode == "faultfs" else None
    broker = None
    try:
        broker, bootstrap = start_broker(workdir)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topic = f"cost-{mode}"
        create_topic(admin, topic, args.partitions, 1)
        full = bench_produce(bootstrap, topic, args.messages, args.value_bytes, args.acks)
        consumed = bench_consume(bootstrap, topic, args.partitions, args.messages)
        create_topic(admin, topic + "-paced", args.partitions, 1)
        paced = bench_produce(bootstrap, topic + "-paced", int(args.paced_rate * 10), args.value_bytes, args.acks,
                              args.paced_rate)
        del admin
        return {"mode": mode, "produce": full["msgs_per_s"], "errors": full["errors"] + paced["errors"],
                "consume": consumed["msgs_per_s"], "p50": paced["p50_ms"], "p99": paced["p99_ms"]}
    finally:
        if broker is not None:
            broker.terminate()
            try:
                broker.wait(20)
            except subprocess.TimeoutExpired:
                broker.kill()
        if fs is not None:
            fs.terminate()
            try:
                fs.wait(10)
            except subprocess.TimeoutExpired:
                fs.kill()
            subprocess.run(["fusermount3", "-u", "-z", os.path.join(workdir, "data")], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--acks", default="1")
    ap.add_argument("--paced-rate", type=float, default=5_000, help="msg/s for the latency measurement")
    args = ap.parse_args()
    side_by_side(("plain", "faultfs"), args.rounds, lambda mode: one(mode, args),
                 [("produce", ",.0f", " msg/s"), ("consume", ",.0f", " msg/s"), ("p50", "", " ms"),
                  ("p99", "", " ms"), ("errors", "", "")])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the ack proxy (nemesis/ackproxy.py) adds to each request with no fault active: side by side with none.

One standalone broker at a time on 127.0.0.1; in "proxy" mode it advertises the proxy's port, so every
connection after bootstrap goes through the proxy, as the clients' do on the nodes. Alternating direct / proxy
for --rounds rounds in one run, a producer sends --messages 100-byte values one at a time (acks=all, each
flushed before the next: one request in flight) and the ack latency of each is measured.

    .venv/bin/python bench/ackproxy_cost.py [--rounds 3] [--messages 2000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from produce import create_topic, free_port, percentile  # noqa: E402
from sidebyside import side_by_side  # noqa: E402

PROXY = str(REPO / "nemesis" / "ackproxy.py")


def wait_line(path: str, prefix: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(path) as f:
            if any(line.startswith(prefix) for line in f):
                return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start; see {path}")


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("broker did not start")


def one(mode: str, messages: int) -> dict:
    workdir = tempfile.mkdtemp(prefix=f"acked-apcost-{mode}-", dir="/tmp")
    broker_port, proxy_port = free_port(), free_port()
    advertised = proxy_port if mode == "proxy" else broker_port
    cfg = os.path.join(workdir, "server.properties")
    with open(cfg, "w") as f:
        f.write(f"listeners=PLAINTEXT://127.0.0.1:{broker_port}\n"
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{advertised}\nlog.dirs={workdir}/data\n")
    procs = []
    try:
        broker = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "acked-broker"), cfg],
                                  stderr=open(os.path.join(workdir, "broker.log"), "wb"))
        procs.append(broker)
        wait_port(broker_port, broker)
        if mode == "proxy":
            log = os.path.join(workdir, "proxy.log")
            proxy = subprocess.Popen([sys.executable, PROXY, "serve", "--listen", f"127.0.0.1:{proxy_port}",
                                      "--upstream", f"127.0.0.1:{broker_port}", "--control",
                                      os.path.join(workdir, "ctl.sock")], stdout=open(log, "w"), stderr=subprocess.STDOUT)
            procs.append(proxy)
            wait_line(log, "listening", proxy, "ackproxy")
        bootstrap = f"127.0.0.1:{advertised}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        create_topic(admin, "cost", 1, 1)
        del admin
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
        value, latencies = b"x" * 100, []
        for _ in range(50):                       # warm up the connection
            p.produce("cost", value)
            p.flush(10)
        for _ in range(messages):
            t = time.perf_counter()
            p.produce("cost", value)
            p.flush(10)
            latencies.append(time.perf_counter() - t)
        latencies.sort()
        return {"mode": mode, "mean_ms": statistics.fmean(latencies) * 1000,
                "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args()
    side_by_side(("direct", "proxy"), args.rounds, lambda mode: one(mode, args.messages),
                 [("mean_ms", ".3f", " ms"), ("p50_ms", ".3f", " ms"), ("p99_ms", ".3f", " ms")])
    return 0


if __name__ == "__main__":
    sys.exit(main())

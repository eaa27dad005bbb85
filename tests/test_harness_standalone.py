"""The runner, workers, clients and drain against ONE real standalone acked-broker (no ZooKeeper, no faults).

The cluster here is a thin Cluster around a single `acked-broker` process in standalone mode, so the whole
main/drain/check path runs with real confluent-kafka and kafka-python clients even where a multi-node
cluster is not available; multi-node runs with faults are in tests/test_harness_e2e.py.
"""
import collections
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkers.history import read_history
from clusters.base import Cluster, Node
from harness.config import TestDescription
from harness.runner import run_test
from broker_fixtures import broker, broker_factory  # noqa: F401


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _BrokerHost(Node):
    """The host the one broker runs on; the runner only needs its name and broker id."""
    name, broker_id = "n1", 1

    def run(self, cmd, timeout=30.0, check=False, input=None):
        raise NotImplementedError("no commands on the standalone broker's host")

    def put(self, local, remote): raise NotImplementedError
    def get(self, remote, local): raise NotImplementedError
    def start_daemon(self, name, cmd, logfile, env=None): raise NotImplementedError
    def signal(self, name, sig): raise NotImplementedError
    def is_running(self, name): raise NotImplementedError


class StandaloneBroker(Cluster):
    def __init__(self, spec):
        self.nodes = [_BrokerHost()]
        self.port = _free_port()
        self.dir = Path(spec.work_dir)
        self.proc = None
        self.torn_down = False

    def bootstrap_servers(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "server.properties"
        conf.write_text(f"broker.id=1\nlisteners=PLAINTEXT://127.0.0.1:{self.port}\nlog.dirs={self.dir / 'data'}\n"
                        "group.initial.rebalance.delay.ms=0\n")
        self.log = open(self.dir / "broker.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "broker.main", str(conf)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("standalone broker did not start")

    def start_broker(self, node): raise NotImplementedError
    def stop_broker(self, node, sig="TERM"): raise NotImplementedError
    def reset(self): raise NotImplementedError

    def collect_logs(self, dest):
        (Path(dest) / "n1").mkdir(parents=True, exist_ok=True)
        (Path(dest) / "n1" / "broker.log").write_text((self.dir / "broker.log").read_text())

    def teardown(self):
        self.torn_down = True
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self.log.close()


def one_node(tmp_path, broker: dict | None = None, **fields) -> TestDescription:
    return TestDescription(name="standalone", backend="local", nodes=1, results_dir=str(tmp_path / "results"),
                           topic={"replication.factor": "1", "min.insync.replicas": "1"},
                           broker={"default.replication.factor": "1", "min.insync.replicas": "1", **(broker or {})},
                           final_time_limit=20, **fields)


def run(tmp_path, **fields):
    clusters = []

    def factory(spec):
        clusters.append(StandaloneBroker(spec))
        return clusters[0]
    result = run_test(one_node(tmp_path, **fields), cluster_factory=factory)
    assert clusters and clusters[0].torn_down and clusters[0].proc is None
    return result


def check_jepsen_semantics(history):
    """One op at a time per process; a process is never reused after an info completion."""
    open_ops, retired = {}, set()
    for e in history:
        p = e["process"]
        if p == "nemesis":
            continue
        assert p not in retired, f"process {p} reused after info at index {e['index']}"
        if e["type"] == "invoke":
            assert p not in open_ops, f"process {p} invoked twice at index {e['index']}"
            open_ops[p] = e
        else:
            assert open_ops.pop(p)["f"] == e["f"]
            if e["type"] == "info":
                retired.add(p)


@pytest.mark.parametrize("client", ["confluent-kafka", "kafka-python"])
def test_a_run_records_a_checkable_history_and_drains_every_key(tmp_path, client):
    result = run(tmp_path, client=client, time_limit=6, rate=150, concurrency="4", seed=21, max_writes_per_key=40)
    assert result.error is None, result.error
    assert result.valid is True, result.results["bad-anomaly-types"]
    assert result.exit_status == 0
    history = list(read_history(result.run_dir / "history.jsonl"))
    check_jepsen_semantics(history)
    fs = collections.Counter((e["f"], e["type"]) for e in history)
    assert fs[("send", "ok")] > 200 and fs[("poll", "ok")] > 50 and fs[("assign", "ok")] > 5
    assert fs[("crash", "info")] >= 1
    sent = {(m[1], m[2][1]) for e in history if e["f"] == "send" and e["type"] == "ok" for m in e["value"]}
    assert len({k for k, _ in sent}) > 8  # keys rotated: more keys than the 8 active at once
    stats = result.results["stats"]
    assert stats["acknowledged"] == len(sent) and stats["acknowledged-but-never-read"] == 0
    test = json.loads((result.run_dir / "test.json").read_text())
    assert test["seed"] == 21 and test["test"]["client"] == client
    assert (result.run_dir / "logs" / "n1" / "broker.log").exists()


def test_subscribe_mode_reads_through_a_consumer_group(tmp_path):
    # the processes share one group; its first rebalance would wait Kafka's 3 s delay, half of a 6 s run; and on a
    # loaded machine (a CI run beside other jobs) the group's joins took all of 6 s once: 12 s leaves room to poll
    result = run(tmp_path, time_limit=12, rate=100, concurrency="3", seed=5, sub_via="subscribe",
                 broker={"group.initial.rebalance.delay.ms": "0"})
    assert result.error is None, result.error
    assert result.valid is True, result.results["bad-anomaly-types"]
    history = list(read_history(result.run_dir / "history.jsonl"))
    check_jepsen_semantics(history)
    subscribed = [e for e in history if e["f"] == "subscribe" and e["type"] == "ok"]
    subscribers = {e["process"] for e in subscribed}
    polled = [e for e in history if e["f"] == "poll" and e["type"] == "ok" and e["process"] in subscribers
              and any(e["value"][0][1].values())]
    assert subscribed and polled


def test_producer_pool_gives_each_new_process_its_own_never_used_producer(broker):
    from test_broker_api import make_topic
    from workloads.queue import ConfluentClient, KeyMap, ProducerPool
    make_topic(broker, "acked-queue-0", partitions=8)
    conf = {"acks": "all", "enable.idempotence": "true"}
    pool = ProducerPool(broker.bootstrap, conf, size=2)
    clients = [ConfluentClient(process=p, bootstrap=broker.bootstrap, keymap=KeyMap(8), topics=None,
                               producer_config=conf, consumer_config={}, group_id="g", producer_pool=pool)
               for p in range(5)]

    def spares(n):
        deadline = time.monotonic() + 30
        while len(pool._spares) < n:
            assert time.monotonic() < deadline, "the pool did not fill up"
            time.sleep(0.05)
    try:
        spares(2)
        for p, client in enumerate(clients):
            done = client.invoke({"process": p, "f": "send", "value": [["send", "0", 100 + p]]})
            assert done == {"type": "ok", "value": [["send", "0", [p, 100 + p]]]}
        producers = [c._producer for c in clients]
        assert len(set(map(id, producers))) == len(producers)   # no producer serves two processes
        spares(2)                                                 # taken spares are replaced
        assert not {id(p) for p, _ in pool._spares} & set(map(id, producers))
    finally:
        for c in clients:
            c.close()
        pool.close()
    assert pool._spares == [] and not pool._thread.is_alive()

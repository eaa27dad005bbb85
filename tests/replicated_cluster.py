"""A 3-broker local cluster (broker processes, one real ZooKeeper) and what replication tests do to it.

Import the fixture into a test module (``from replicated_cluster import make_cluster``); clusters are
torn down by conftest's local_cluster_factory and their logs kept under the test's tmp_path.  Faults are
signals to the broker processes (SIGKILL, SIGSTOP/SIGCONT); short replica.lag.time.max.ms and
zookeeper.session.timeout.ms keep every scenario to seconds.
"""
from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, TopicPartition
from kazoo.client import KazooClient

from broker_fixtures import RawClient
from conftest import wait_until

LAG_MS = 1500
SESSION_MS = 3000
BASE_CONFIG = {
    "replica.lag.time.max.ms": str(LAG_MS),
    "zookeeper.session.timeout.ms": str(SESSION_MS),
    "replica.fetch.wait.max.ms": "100",
    "auto.create.topics.enable": "false",
    "offsets.topic.num.partitions": "1",
}
TOPIC = "t"
#: the controller re-reads every partition when no ZooKeeper event came for this long (broker/controller.py,
#: ZkBroker._work's idle tick); a check that something "stays" so must span at least one such re-read
CONTROLLER_IDLE_REREAD_S = 5.0


class Replicated:
    """A started 3-broker local cluster plus what the scenarios need to watch and poke it."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.zk = KazooClient(hosts=cluster.zookeeper_connect, timeout=10)
        self.zk.start(timeout=20)
        self.admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers()})
        self.unavailable: set[int] = set()   # paused or killed: no client should bootstrap from them

    def close(self):
        self.zk.stop()
        self.zk.close()

    def node(self, broker_id: int):
        return next(n for n in self.cluster.nodes if n.broker_id == broker_id)

    def port(self, broker_id: int) -> int:
        return self.cluster.broker_ports[self.node(broker_id).name]

    def raw(self, broker_id: int, timeout: float = 10.0) -> RawClient:
        return RawClient(self.port(broker_id), timeout=timeout)

    def signal(self, broker_id: int, sig: str) -> None:
        assert self.node(broker_id).signal("broker", sig), f"broker {broker_id} is not running"
        (self.unavailable.add if sig == "STOP" else self.unavailable.discard)(broker_id)

    def kill(self, broker_id: int) -> None:
        self.cluster.stop_broker(self.node(broker_id), "KILL")
        self.unavailable.add(broker_id)

    def restart(self, broker_id: int) -> None:
        self.cluster.start_broker(self.node(broker_id))
        self.unavailable.discard(broker_id)

    def registered(self) -> set[int]:
        return {int(i) for i in self.zk.get_children("/brokers/ids")}

    def wait_until_registered(self, broker_id: int, timeout: float = 30.0) -> None:
        wait_until(lambda: broker_id in self.registered(), timeout, what=f"broker {broker_id} in /brokers/ids")

    def fresh_admin(self) -> AdminClient:
        """An admin client that cannot pick a paused broker: once their sessions have expired,
        Metadata no longer lists them, and the client is bootstrapped from the others only."""
        wait_until(lambda: not self.registered() & self.unavailable, SESSION_MS / 1000 + 10,
                   what="paused brokers leave /brokers/ids")
        return AdminClient({"bootstrap.servers": ",".join(self.available_bootstrap())})

    def available_bootstrap(self) -> list[str]:
        return [f"127.0.0.1:{self.cluster.broker_ports[n.name]}" for n in self.cluster.nodes
                if n.broker_id not in self.unavailable]

    def broker_log(self, broker_id: int) -> str:
        return self.cluster.log_path(self.node(broker_id)).read_text(errors="replace")

    def state(self, topic: str = TOPIC, partition: int = 0) -> dict | None:
        path = f"/brokers/topics/{topic}/partitions/{partition}/state"
        if self.zk.exists(path) is None:
            return None
        return json.loads(self.zk.get(path)[0])

    def states(self, topic: str, partitions: int) -> list[dict | None]:
        return [self.state(topic, p) for p in range(partitions)]

    def wait_state(self, pred, what: str, timeout: float = 20.0, topic: str = TOPIC) -> dict:
        return wait_until(lambda: (st := self.state(topic)) is not None and pred(st) and st, timeout, 0.05, what)

    def wait_states(self, pred, what: str, topic: str, partitions: int, timeout: float = 20.0) -> list[dict]:
        """Until pred holds for the states of all the topic's partitions (all of them present)."""
        return wait_until(lambda: None not in (sts := self.states(topic, partitions)) and pred(sts) and sts,
                          timeout, 0.05, what)

    def create_topic(self, name: str = TOPIC, config: dict | None = None, assignment=None) -> dict:
        topic = (NewTopic(name, len(assignment), replica_assignment=assignment, config=config or {}) if assignment
                 else NewTopic(name, 1, 3, config=config or {}))
        self.admin.create_topics([topic])[name].result(timeout=20)
        return self.wait_state(lambda s: s["leader"] >= 0 and len(s["isr"]) == 3, "all replicas in sync", topic=name)

    def producer(self, acks: str, **extra) -> Producer:
        conf = {"bootstrap.servers": self.cluster.bootstrap_servers(), "acks": acks, "linger.ms": 0,
                "message.timeout.ms": 8000, "request.timeout.ms": 5000, "topic.metadata.refresh.interval.ms": 500}
        conf.update(extra)
        return Producer(conf)

    def produce(self, values: list[str], acks: str = "all", topic: str = TOPIC, **extra) -> dict[str, object]:
        """Send values one request each and wait; value -> offset when acknowledged, else the KafkaError."""
        p = self.producer(acks, **extra)
        out: dict[str, object] = {}

        def done(err, msg):
            out[msg.value().decode()] = err if err is not None else msg.offset()
        for v in values:
            p.produce(topic, v.encode(), on_delivery=done)
            p.flush(15)
        assert p.flush(15) == 0
        return out

    def pause_followers(self, leader: int, topic: str = TOPIC) -> list[int]:
        """SIGSTOP the leader's followers, then write one acks=1 record ("parked-fetch-catch"): a follower
        fetch parked at the leader when its broker stopped (at most one per follower) is answered with it, so
        nothing written after it reaches a follower before the follower runs again.  Returns the followers."""
        followers = [r for r in (1, 2, 3) if r != leader]
        for f in followers:
            self.signal(f, "STOP")
        assert acked(self.produce(["parked-fetch-catch"], acks="1", topic=topic)) == {"parked-fetch-catch"}
        return followers

    def read_all(self, topic: str = TOPIC, timeout: float = 20.0, min_end: int = 0) -> list[str]:
        """Everything consumers can see (below the high watermark), from a fresh group-less consumer.

        A new leader's high watermark may lag behind what the old one committed until its
        followers report in (as in Kafka): `min_end` waits until it reaches that many offsets."""
        c = KafkaConsumer(bootstrap_servers=self.available_bootstrap(), group_id=None,
                          enable_auto_commit=False, auto_offset_reset="earliest", request_timeout_ms=8000)
        try:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            end = wait_until(lambda: (e := c.end_offsets([tp])[tp]) >= min_end and (e,), timeout, 0.2,
                             f"the high watermark reaches {min_end}")[0]
            c.seek_to_beginning(tp)
            values: list[str] = []

            def read_on() -> bool:
                for recs in c.poll(timeout_ms=500).values():
                    values.extend(r.value.decode() for r in recs)
                return c.position(tp) >= end
            wait_until(read_on, timeout, 0, f"reading up to the high watermark {end}")
            return values
        finally:
            c.close()


@pytest.fixture
def make_cluster(local_cluster_factory, tmp_path):
    """Clusters torn down by local_cluster_factory; their logs are kept under the test's tmp_path."""
    made = []

    def make(**broker_config) -> Replicated:
        cluster = local_cluster_factory(nodes=3, zookeeper="dedicated",
                                        broker_config={**BASE_CONFIG, **broker_config})
        r = Replicated(cluster)
        made.append(r)
        return r

    try:
        yield make
    finally:
        for r in made:
            r.close()
            r.cluster.collect_logs(tmp_path / "cluster-logs")


def acked(results: dict) -> set[str]:
    return {v for v, r in results.items() if isinstance(r, int)}


def stop_followers_until_isr_is_leader_alone(c: Replicated) -> tuple[int, list[int]]:
    st = c.state()
    leader = st["leader"]
    followers = [r for r in (1, 2, 3) if r != leader]
    for f in followers:
        c.signal(f, "STOP")
    c.wait_state(lambda s: s["isr"] == [leader], "ISR shrinks to the leader alone", timeout=15)
    return leader, followers

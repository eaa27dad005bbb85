"""The talk's replication claims on a real 3-broker cluster: local broker processes, a real
ZooKeeper, real clients (confluent-kafka produces, kafka-python reads without a group).

Faults are signals to the broker processes (SIGKILL, SIGSTOP/SIGCONT), ordered so that each
outcome is forced, not hoped for. Short replica.lag.time.max.ms and
zookeeper.session.timeout.ms keep every scenario to seconds.
"""
from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewTopic)
from kafka import KafkaConsumer, TopicPartition
from kazoo.client import KazooClient

pytestmark = pytest.mark.timeout(180)

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


# ---------------------------------------------------------------------------------- helpers

def _wait_for(read, pred, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = read()
        if pred(value):
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s; last state {value}")


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

    def signal(self, broker_id: int, sig: str) -> None:
        assert self.node(broker_id).signal("broker", sig), f"broker {broker_id} is not running"
        (self.unavailable.add if sig == "STOP" else self.unavailable.discard)(broker_id)

    def kill(self, broker_id: int) -> None:
        self.cluster.stop_broker(self.node(broker_id), "KILL")
        self.unavailable.add(broker_id)

    def restart(self, broker_id: int) -> None:
        self.cluster.start_broker(self.node(broker_id))
        self.unavailable.discard(broker_id)

    def fresh_admin(self) -> AdminClient:
        """An admin client that cannot pick a paused broker: once their sessions have expired,
        Metadata no longer lists them, and the client is bootstrapped from the others only."""
        deadline = time.monotonic() + SESSION_MS / 1000 + 10
        while {int(i) for i in self.zk.get_children("/brokers/ids")} & self.unavailable:
            assert time.monotonic() < deadline, "paused brokers still registered"
            time.sleep(0.1)
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
        return _wait_for(lambda: self.state(topic), lambda st: st is not None and pred(st), what, timeout)

    def wait_states(self, pred, what: str, topic: str, partitions: int, timeout: float = 20.0) -> list[dict]:
        """Until pred holds for the states of all the topic's partitions (all of them present)."""
        return _wait_for(lambda: self.states(topic, partitions),
                         lambda sts: None not in sts and pred(sts), what, timeout)

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

    def read_all(self, topic: str = TOPIC, timeout: float = 20.0, min_end: int = 0) -> list[str]:
        """Everything consumers can see (below the high watermark), from a fresh group-less consumer.

        A new leader's high watermark may lag behind what the old one committed until its
        followers report in (as in Kafka): `min_end` waits until it reaches that many offsets."""
        c = KafkaConsumer(bootstrap_servers=self.available_bootstrap(), group_id=None,
                          enable_auto_commit=False, auto_offset_reset="earliest", request_timeout_ms=8000,
                          )
        try:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            deadline = time.monotonic() + timeout
            end = c.end_offsets([tp])[tp]
            while end < min_end and time.monotonic() < deadline:
                time.sleep(0.2)
                end = c.end_offsets([tp])[tp]
            assert end >= min_end, f"high watermark {end} stays below {min_end}"
            c.seek_to_beginning(tp)
            values: list[str] = []
            deadline = time.monotonic() + timeout
            while c.position(tp) < end and time.monotonic() < deadline:
                for recs in c.poll(timeout_ms=500).values():
                    values += [r.value.decode() for r in recs]
            assert c.position(tp) >= end, f"could not read up to the high watermark {end}"
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


# ---------------------------------------------------------------------------------- scenarios

def test_leader_sigkill_fails_over_within_the_isr_and_the_old_leader_truncates_and_rejoins(make_cluster):
    c = make_cluster()
    c.create_topic(config={"min.insync.replicas": "2"})
    first = c.produce([f"a{i}" for i in range(200)])
    assert acked(first) == set(first), first
    old = c.state()
    leader = old["leader"]
    followers = [r for r in (1, 2, 3) if r != leader]

    # A tail only the leader has: followers paused (shorter than replica.lag.time.max.ms, so
    # they stay in the ISR and the tail is never committed), acks=1 writes to the leader.
    for f in followers:
        c.signal(f, "STOP")
    time.sleep(0.3)    # outstanding follower fetches (100 ms long polls) have been answered
    tail = c.produce([f"tail{i}" for i in range(5)], acks="1")
    assert acked(tail) == set(tail)
    c.kill(leader)
    killed_at = time.monotonic()
    for f in followers:
        c.signal(f, "CONT")

    new = c.wait_state(lambda s: s["leader"] in followers, "a follower is elected", timeout=20)
    failover = time.monotonic() - killed_at
    assert new["leader"] in old["isr"] and new["leader_epoch"] > old["leader_epoch"]
    assert failover < SESSION_MS / 1000 + 5, f"failover took {failover:.1f}s"

    second = c.produce([f"b{i}" for i in range(100)])
    assert acked(second) == set(second), second

    c.restart(leader)
    c.wait_state(lambda s: leader in s["isr"], "the old leader rejoins the ISR", timeout=30)
    log = c.broker_log(leader)
    assert "truncated from" in log, "the old leader did not truncate its divergent tail"

    # Make the old leader lead again: everything acknowledged with acks=all is there, its
    # uncommitted tail is not (it was truncated, not resurrected).
    survivors = [r for r in followers]
    for f in survivors:
        c.kill(f)
    c.wait_state(lambda s: s["leader"] == leader, "the old leader leads again", timeout=20)
    seen = c.read_all(min_end=len(first) + len(second))
    assert set(first) | set(second) <= set(seen)
    assert not set(tail) & set(seen)
    assert len(seen) == len(set(seen))


def test_unclean_election_loses_acknowledged_writes(make_cluster):
    """The talk's trap: ISR = leader alone, acks=all acknowledged, leader dies, a stale follower leads."""
    c = make_cluster(**{"unclean.leader.election.enable": "true", "min.insync.replicas": "1"})
    c.create_topic()
    before = c.produce([f"before{i}" for i in range(50)])
    assert acked(before) == set(before)
    leader, followers = stop_followers_until_isr_is_leader_alone(c)

    during = c.produce([f"during{i}" for i in range(50)])
    assert acked(during) == set(during), "acks=all with the ISR at the leader alone acknowledges every write"
    c.kill(leader)
    stale = followers[0]
    c.signal(stale, "CONT")
    st = c.wait_state(lambda s: s["leader"] == stale, "the stale follower is elected (unclean)", timeout=30)
    assert st["isr"] == [stale]

    seen = c.read_all(min_end=len(before))
    assert set(before) <= set(seen)
    lost = acked(during) - set(seen)
    assert lost == acked(during), f"expected every write acknowledged after the ISR shrank to be lost; kept {acked(during) - lost}"
    assert "unclean election" in "".join(c.broker_log(b) for b in (stale,)), "the controller logs the unclean election"
    # The cluster goes on accepting writes at the offsets the lost records had.
    after = c.produce(["after0"])
    assert acked(after) == {"after0"}


def test_clean_election_keeps_the_partition_offline_until_the_old_leader_returns(make_cluster):
    c = make_cluster(**{"unclean.leader.election.enable": "false", "min.insync.replicas": "1"})
    c.create_topic()
    before = c.produce([f"before{i}" for i in range(50)])
    leader, followers = stop_followers_until_isr_is_leader_alone(c)
    during = c.produce([f"during{i}" for i in range(50)])
    assert acked(during) == set(during)
    c.kill(leader)
    stale = followers[0]
    c.signal(stale, "CONT")
    offline = c.wait_state(lambda s: s["leader"] == -1, "the partition goes offline", timeout=30)
    assert offline["isr"] == [leader]
    time.sleep(2)    # and stays offline: the stale follower is never elected
    assert c.state()["leader"] == -1
    md = c.fresh_admin().list_topics(TOPIC, timeout=10).topics[TOPIC].partitions[0]
    assert md.leader == -1 and md.error is not None and md.error.code() == KafkaError.LEADER_NOT_AVAILABLE
    refused = c.produce(["while-offline"], **{"message.timeout.ms": 2000})
    assert not acked(refused)

    c.restart(leader)
    back = c.wait_state(lambda s: s["leader"] == leader, "the old leader is elected when it returns", timeout=30)
    assert back["leader_epoch"] > offline["leader_epoch"]
    seen = c.read_all(min_end=len(before) + len(during))
    assert acked(before) | acked(during) <= set(seen), "nothing acknowledged is lost"
    c.signal(followers[1], "CONT")
    c.wait_state(lambda s: len(s["isr"]) == 3, "the stale followers catch up and rejoin", timeout=30)


def test_min_insync_replicas_2_refuses_writes_once_the_isr_is_one(make_cluster):
    c = make_cluster(**{"unclean.leader.election.enable": "false", "min.insync.replicas": "2"})
    c.create_topic()
    before = c.produce([f"before{i}" for i in range(20)])
    assert acked(before) == set(before)
    leader, followers = stop_followers_until_isr_is_leader_alone(c)
    refused = c.produce(["refused"], **{"message.send.max.retries": 0})
    assert refused["refused"].code() == KafkaError.NOT_ENOUGH_REPLICAS, refused
    # acks=1 is not guarded by min.insync.replicas: that is what makes it unsafe.
    r = c.produce(["acks1"], acks="1")
    assert acked(r) == {"acks1"}, r
    for f in followers:
        c.signal(f, "CONT")
    c.wait_state(lambda s: len(s["isr"]) >= 2, "followers rejoin the ISR", timeout=20)
    r = c.produce(["accepted"])
    assert acked(r) == {"accepted"}, r
    # Nothing acknowledged with acks=all can be lost to the leader's death now: two replicas have it.
    c.kill(leader)
    c.wait_state(lambda s: s["leader"] in followers, "failover", timeout=20)
    seen = set(c.read_all(min_end=len(before) + 2))
    assert not (set(before) | {"accepted"}) - seen, f"acknowledged but lost: {(set(before) | {'accepted'}) - seen}"
    assert "refused" not in seen


def test_acks_1_leader_killed_before_any_follower_fetched_loses_the_record(make_cluster):
    # A long replica.lag.time.max.ms: the paused followers stay in the ISR, so the election is clean.
    c = make_cluster(**{"replica.lag.time.max.ms": "20000", "zookeeper.session.timeout.ms": "6000"})
    c.create_topic()
    before = c.produce([f"before{i}" for i in range(20)])
    st = c.state()
    leader = st["leader"]
    followers = [r for r in (1, 2, 3) if r != leader]
    for f in followers:
        c.signal(f, "STOP")
    time.sleep(0.3)   # answered: no follower fetch is parked at the leader to carry the record away
    lost = c.produce(["acks1-record"], acks="1")
    assert isinstance(lost["acks1-record"], int), "the leader acknowledges acks=1 alone"
    c.kill(leader)
    for f in followers:
        c.signal(f, "CONT")
    new = c.wait_state(lambda s: s["leader"] in followers, "a follower from the ISR is elected", timeout=30)
    assert new["leader"] in st["isr"]
    seen = c.read_all(min_end=len(before))
    assert set(before) <= set(seen)
    assert "acks1-record" not in seen, "an acks=1 record the followers never fetched is gone"
    c.restart(leader)
    c.wait_state(lambda s: leader in s["isr"], "the old leader rejoins", timeout=30)
    assert "truncated from" in c.broker_log(leader)


def test_min_insync_replicas_topic_override_versus_broker_default(make_cluster):
    c = make_cluster(**{"min.insync.replicas": "2"})
    c.create_topic("dflt", assignment=[[1, 2, 3]])
    c.create_topic("ovr", config={"min.insync.replicas": "1"}, assignment=[[1, 2, 3]])
    described = c.admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "dflt"),
                                          ConfigResource(ConfigResource.Type.TOPIC, "ovr")])
    entries = {res.name: f.result()["min.insync.replicas"] for res, f in described.items()}
    assert (entries["dflt"].value, entries["dflt"].source) == ("2", ConfigSource.STATIC_BROKER_CONFIG.value)
    assert (entries["ovr"].value, entries["ovr"].source) == ("1", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)

    for f in (2, 3):
        c.signal(f, "STOP")
    for t in ("dflt", "ovr"):
        c.wait_state(lambda s: s["isr"] == [1], f"{t}: ISR shrinks to broker 1", timeout=15, topic=t)
    no_retry = {"message.send.max.retries": 0}
    r = c.produce(["x"], topic="dflt", **no_retry)
    assert r["x"].code() == KafkaError.NOT_ENOUGH_REPLICAS, "the broker default (2) applies to dflt"
    assert acked(c.produce(["y"], topic="ovr", **no_retry)) == {"y"}, "the topic's override (1) wins"

    # Altering the topic changes it at once, on the leader, whichever broker took the request.
    def alter(topic: str, value: str) -> None:
        res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
            ConfigEntry("min.insync.replicas", value, incremental_operation=AlterConfigOpType.SET)])
        admin = c.fresh_admin()
        admin.incremental_alter_configs([res])[res].result(timeout=10)
    alter("dflt", "1")
    alter("ovr", "2")
    time.sleep(0.5)
    assert acked(c.produce(["x2"], topic="dflt", **no_retry)) == {"x2"}
    r = c.produce(["y2"], topic="ovr", **no_retry)
    assert r["y2"].code() == KafkaError.NOT_ENOUGH_REPLICAS
    for f in (2, 3):
        c.signal(f, "CONT")


def test_new_leader_exposes_every_acknowledged_record_without_further_writes(make_cluster):
    """The harness's stall: a new leader starts with log end > high watermark (followers learn
    the HW one fetch late); with no more writes its HW must still reach its ISR's log end, so
    a consumer sees every acks=all record within seconds of the election."""
    c = make_cluster()
    c.create_topic(config={"min.insync.replicas": "2"})
    results = c.produce([f"v{i}" for i in range(30)])
    assert acked(results) == set(results), results
    last_offset = max(results.values())
    old = c.state()
    c.kill(old["leader"])       # right after the last ack: the followers' HW is likely one behind
    killed_at = time.monotonic()
    new = c.wait_state(lambda s: s["leader"] not in (-1, old["leader"]), "a follower is elected", timeout=20)
    assert new["leader_epoch"] > old["leader_epoch"]
    seen = c.read_all(min_end=last_offset + 1, timeout=5.0)
    assert set(results) <= set(seen), f"acknowledged but unreadable: {sorted(set(results) - set(seen))}"
    assert time.monotonic() - killed_at < SESSION_MS / 1000 + 15


def test_metadata_is_answered_from_the_cached_view_while_zookeeper_is_unreachable(make_cluster):
    """A broker cut off from ZooKeeper must not close a client's connection on Metadata (it did,
    raising kazoo's ConnectionLoss on the request path): it answers from its last view."""
    import datetime

    from kio.schema.create_topics.v7.request import CreatableTopic, CreateTopicsRequest
    from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic

    from broker_fixtures import RawClient

    c = make_cluster()
    c.create_topic()
    assert acked(c.produce(["x"])) == {"x"}
    port = c.cluster.broker_ports[c.cluster.nodes[0].name]
    warm = RawClient(port)
    try:
        before = warm.request(MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                              include_topic_authorized_operations=False))
        assert [t.name for t in before.topics] == [TOPIC]
    finally:
        warm.close()
    zk_node = c.cluster.zookeeper.nodes[0]
    assert zk_node.signal("zookeeper", "STOP")
    try:
        time.sleep(SESSION_MS / 1000 + 1)     # the brokers' ZooKeeper connections have dropped
        client = RawClient(port, timeout=20)
        try:
            for body in (MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                         include_topic_authorized_operations=False),
                         MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name=TOPIC),),
                                         allow_auto_topic_creation=False, include_topic_authorized_operations=False),
                         MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name="never-made"),),
                                         allow_auto_topic_creation=True, include_topic_authorized_operations=False)):
                resp = client.request(body)   # the same connection answers all three
                names = {t.name: t for t in resp.topics}
                if "never-made" in names:
                    assert names["never-made"].error_code.value != 0
                else:
                    t = names[TOPIC]
                    assert t.error_code.value == 0 and len(t.partitions) == 1
                    assert t.partitions[0].leader_id >= 0
                assert resp.brokers
            # A request that must write to ZooKeeper gets a retriable error code, on the same connection.
            made = client.request(CreateTopicsRequest(
                topics=(CreatableTopic(name="made-while-cut-off", num_partitions=1, replication_factor=3,
                                       assignments=(), configs=()),),
                timeout=datetime.timedelta(seconds=5), validate_only=False))
            assert made.topics[0].error_code.value != 0, made
            again = client.request(MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                                   include_topic_authorized_operations=False))
            assert [t.name for t in again.topics] == [TOPIC]
        finally:
            client.close()
        assert "Metadata v12 failed" not in c.broker_log(c.cluster.nodes[0].broker_id)
    finally:
        zk_node.signal("zookeeper", "CONT")


def test_followers_of_idle_partitions_stay_in_sync_with_incremental_fetch_sessions(make_cluster):
    """Followers fetch with KIP-227 sessions, naming only partitions whose offset moved; partitions
    with no writes for several replica.lag.time.max.ms must not fall out of the ISR (a follower at
    the log end is in step), writes to one keep flowing, and an idle partition takes back a follower
    that did fall out."""
    c = make_cluster()
    name = "idle"
    c.admin.create_topics([NewTopic(name, 6, 3)])[name].result(timeout=20)
    before = c.wait_states(lambda sts: all(len(s["isr"]) == 3 for s in sts), "all replicas in sync", name, 6)
    p = c.producer("all")
    acks = []
    end = time.monotonic() + 4 * LAG_MS / 1000
    while time.monotonic() < end:     # writes to partition 0 only; 1-5 stay idle
        p.produce(name, b"v", partition=0, on_delivery=lambda err, msg: acks.append(err))
        p.flush(5)
        time.sleep(0.05)
    assert acks and all(e is None for e in acks), acks[:3]
    after = c.states(name, 6)
    assert [len(s["isr"]) for s in after] == [3] * 6, after
    assert [s["leader_epoch"] for s in after] == [s["leader_epoch"] for s in before]

    # A follower paused past replica.lag.time.max.ms leaves the ISR of the partitions it follows;
    # resumed, it must rejoin them all although none of them is written to any more.
    paused = next(r for r in (1, 2, 3) if any(r != s["leader"] for s in after))
    c.signal(paused, "STOP")
    c.wait_states(lambda sts: any(paused not in s["isr"] for s in sts), f"broker {paused} leaves an ISR", name, 6)
    c.signal(paused, "CONT")
    c.wait_states(lambda sts: all(len(s["isr"]) == 3 for s in sts),
                  f"idle partitions take broker {paused} back", name, 6)


def test_a_write_after_longer_idle_than_the_lag_time_finds_the_followers_in_sync(make_cluster):
    """An in-step follower's lastCaughtUpTime is its latest fetch, also when its fetch session did not
    name the partition: the first write to partitions idle for twice replica.lag.time.max.ms must not
    find their followers lagging (the leader's ISR check runs every 50 ms; the followers' fetch of the
    new record takes milliseconds, so a stale clock shrinks some of many partitions at once)."""
    c = make_cluster()
    name, partitions = "quiet", 24
    c.admin.create_topics([NewTopic(name, partitions, 3)])[name].result(timeout=20)
    c.wait_states(lambda sts: all(len(s["isr"]) == 3 for s in sts), "all replicas in sync", name, partitions)
    time.sleep(2 * LAG_MS / 1000)
    p = c.producer("all")
    acks = []
    for part in range(partitions):
        p.produce(name, b"v", partition=part, on_delivery=lambda err, msg: acks.append(err))
    assert p.flush(15) == 0
    assert acks == [None] * partitions, acks
    time.sleep(0.5)     # a shrink proposed at the write is in ZooKeeper by now
    after = c.states(name, partitions)
    assert [len(s["isr"]) for s in after] == [3] * partitions, after
    lagged = [line for b in (1, 2, 3) for line in c.broker_log(b).splitlines() if "lagged more than" in line]
    assert not lagged, lagged

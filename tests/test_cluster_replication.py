"""The talk's replication claims on a real 3-broker cluster: local broker processes, a real
ZooKeeper, real clients (confluent-kafka produces, kafka-python reads without a group).

Faults are signals to the broker processes (SIGKILL, SIGSTOP/SIGCONT), ordered so that each
outcome is forced, not hoped for. Short replica.lag.time.max.ms and
zookeeper.session.timeout.ms keep every scenario to seconds.
"""
from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewTopic

from conftest import wait_until
from replicated_cluster import (CONTROLLER_IDLE_REREAD_S, LAG_MS, SESSION_MS, TOPIC, acked, make_cluster,  # noqa: F401
                                stop_followers_until_isr_is_leader_alone)

pytestmark = pytest.mark.timeout(180)

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
    c.pause_followers(leader)
    tail = c.produce([f"tail{i}" for i in range(5)], acks="1")
    assert acked(tail) == set(tail)
    c.kill(leader)
    for f in followers:
        c.signal(f, "CONT")

    new = c.wait_state(lambda s: s["leader"] in followers, "a follower is elected", timeout=20)
    assert new["leader"] in old["isr"] and new["leader_epoch"] > old["leader_epoch"]

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
    # and stays offline: the stale follower, registered again, is never elected, through at least one
    # idle re-read of every partition by the controller
    c.wait_until_registered(stale)
    assert not wait_until(lambda: c.state()["leader"] != -1, CONTROLLER_IDLE_REREAD_S + 2), c.state()
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
    c.pause_followers(leader)   # no follower fetch is left parked at the leader to carry the record away
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

    # Altering the topic changes it on the leader, whichever broker took the request (the leader learns
    # it from its watch on /config/topics: a produce is tried until the new value is in force).
    def alter(topic: str, value: str) -> None:
        res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
            ConfigEntry("min.insync.replicas", value, incremental_operation=AlterConfigOpType.SET)])
        admin = c.fresh_admin()
        admin.incremental_alter_configs([res])[res].result(timeout=10)
    alter("dflt", "1")
    alter("ovr", "2")
    wait_until(lambda: acked(c.produce(["x2"], topic="dflt", **no_retry)) == {"x2"}, 15,
               what="dflt accepts acks=all with an ISR of one")
    wait_until(lambda: not isinstance(e := c.produce(["y2"], topic="ovr", **no_retry)["y2"], int)
               and e.code() == KafkaError.NOT_ENOUGH_REPLICAS, 15, what="ovr refuses acks=all with an ISR of one")
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
    new = c.wait_state(lambda s: s["leader"] not in (-1, old["leader"]), "a follower is elected", timeout=20)
    assert new["leader_epoch"] > old["leader_epoch"]
    seen = c.read_all(min_end=last_offset + 1)     # nothing else would ever move a stuck high watermark
    assert set(results) <= set(seen), f"acknowledged but unreadable: {sorted(set(results) - set(seen))}"


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
    logged = {b: len(c.broker_log(b)) for b in (1, 2, 3)}
    assert zk_node.signal("zookeeper", "STOP")
    try:
        # kazoo logs it when a connection dropped or timed out
        wait_until(lambda: all("Transition to CONNECTING" in c.broker_log(b)[logged[b]:] for b in (1, 2, 3)),
                   SESSION_MS / 1000 + 10, what="every broker's ZooKeeper connection drops")
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

"""broker/controller.py against a real ZooKeeper (the `zookeeper` fixture of tests/conftest.py)."""
from __future__ import annotations

import json
import time

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss, NoNodeError

from broker.controller import (
    CONTROLLER, CONTROLLER_EPOCH, PartitionState, StateWrite, ZkBroker, state_path,
)
from conftest import wait_until


@pytest.fixture
def zk_client(zookeeper):
    zk = KazooClient(hosts=zookeeper.connect_string)
    zk.start(timeout=15)
    try:
        yield zk
    finally:
        zk.stop()
        zk.close()


@pytest.fixture
def brokers(zookeeper):
    """Call with a broker id (and ZkBroker keywords) to start one; all are stopped at the end."""
    started: list[ZkBroker] = []

    def start(broker_id, **kw):
        seen = kw.pop("seen", None)
        if seen is not None:
            kw["on_partition_state"] = lambda t, p, vs, replicas: seen.append((t, p, vs, replicas))
        b = ZkBroker(zookeeper.connect_string, broker_id, "127.0.0.1", 9000 + broker_id, session_timeout_ms=4000, **kw)
        started.append(b)
        b.start(timeout=15)
        return b

    try:
        yield start
    finally:
        for b in started:
            b.stop()


def expire_session(connect: str, broker: ZkBroker) -> None:
    """Kill a session for real: attach a second client to it and close that."""
    session_id, password = broker.zk.client_id
    killer = KazooClient(hosts=connect, client_id=(session_id, password))
    killer.start(timeout=15)
    killer.stop()
    killer.close()


def full_rereads(controller: ZkBroker) -> list[float]:
    """From now on, the start times of the controller's rounds that re-read every partition (appended once
    each round is done): a decision it did not take is shown by a round that started after the fact."""
    started_rounds: list[float] = []
    real = controller.reconcile

    def reconcile(new_topics_only: bool = False):
        started = time.monotonic()
        done = real(new_topics_only)
        if not new_topics_only:
            started_rounds.append(started)
        return done
    controller.reconcile = reconcile
    return started_rounds


def wait_for_a_full_reread(rounds: list[float]) -> None:
    """Until a full round that started after this call is done (the idle one comes within 5 s)."""
    since = time.monotonic()
    wait_until(lambda: any(t > since for t in rounds), 15, what="a full re-read by the controller")


def controller_of(zk) -> tuple[int, int] | None:
    """(controller id, controller epoch); None until both are written (a new controller creates /controller
    before it bumps /controller_epoch, which does not exist before the first election)."""
    try:
        return json.loads(zk.get(CONTROLLER)[0])["brokerid"], int(zk.get(CONTROLLER_EPOCH)[0])
    except NoNodeError:
        return None


def state(zk, topic, p) -> PartitionState | None:
    if zk.exists(state_path(topic, p)) is None:
        return None
    return PartitionState.from_json(zk.get(state_path(topic, p))[0])


def test_registration_is_ephemeral_json_like_kafka(brokers, zk_client):
    b = brokers(1)
    data, stat = zk_client.get("/brokers/ids/1")
    reg = json.loads(data)
    assert reg["host"] == "127.0.0.1" and reg["port"] == 9001
    assert reg["endpoints"] == ["PLAINTEXT://127.0.0.1:9001"]
    assert stat.ephemeralOwner == b.zk.client_id[0]
    assert wait_until(lambda: controller_of(zk_client), 15, what="controller") == (1, 1)
    b.stop()
    wait_until(lambda: zk_client.exists("/brokers/ids/1") is None, 15, what="registration removed")
    wait_until(lambda: zk_client.exists(CONTROLLER) is None, 15, what="controller removed")


def test_second_broker_with_same_id_is_refused_clearly(brokers, zookeeper):
    brokers(1)
    dup = ZkBroker(zookeeper.connect_string, 1, "127.0.0.1", 9999)
    try:
        with pytest.raises(Exception, match="held by another live session"):
            dup.start(timeout=1)
    finally:
        dup.stop()


def test_controller_failover_when_its_session_dies(brokers, zookeeper, zk_client):
    b1, b2, b3 = brokers(1), brokers(2), brokers(3)
    first, epoch = wait_until(lambda: controller_of(zk_client), 15, what="a controller")
    old = {1: b1, 2: b2, 3: b3}[first]
    assert old.is_controller
    expire_session(zookeeper.connect_string, old)
    new, new_epoch = wait_until(lambda: (c := controller_of(zk_client)) and c[0] != first and c[1] > epoch and c,
                                15, what="another controller, in a new controller epoch")
    assert new_epoch == epoch + 1
    wait_until(lambda: not old.is_controller, 15, what="old controller resigned")
    # the expired broker registers again with its new session
    wait_until(lambda: zk_client.exists(f"/brokers/ids/{first}") is not None, 15, what="re-registration")
    assert zk_client.get(f"/brokers/ids/{first}")[1].ephemeralOwner == old.zk.client_id[0]


def test_stale_controller_write_is_rejected(brokers, zookeeper, zk_client):
    b1 = brokers(1)
    wait_until(lambda: b1.is_controller, 15, what="b1 controller")
    b2 = brokers(2)
    b1.create_topic("t", {0: [1, 2]})
    wait_until(lambda: state(zk_client, "t", 0), 15, what="state")
    stale_epoch_version = b1._controller_epoch_version
    expire_session(zookeeper.connect_string, b1)
    wait_until(lambda: b2.is_controller, 15, what="b2 controller")
    wait_until(lambda: zk_client.exists("/brokers/ids/1") is not None, 15, what="b1 back with a new session")
    current = b2.partition_state("t", 0)
    forged = StateWrite("t", 0, PartitionState(1, current.state.leader_epoch + 7, (1,), 1), current.zk_version, "stale")
    # even with the right znode version, the /controller_epoch check fences the old controller
    assert b1.controller_write(forged, epoch_version=stale_epoch_version) == "fenced"
    assert b2.partition_state("t", 0).state == current.state
    # and the current controller with an outdated znode version loses the compare-and-set
    outdated = StateWrite("t", 0, forged.state, current.zk_version - 1 if current.zk_version else 99, "outdated")
    assert b2.controller_write(outdated) == "conflict"
    assert b2.partition_state("t", 0).state == current.state


def test_leader_isr_write_is_compare_and_set(brokers, zk_client):
    b1 = brokers(1)
    brokers(2)
    b1.create_topic("t", {0: [1, 2]})
    seen = wait_until(lambda: b1.partition_state("t", 0), 15, what="state")
    assert seen.state.isr == (1, 2)
    shrunk = b1.write_isr("t", 0, seen, [seen.state.leader])
    assert shrunk is not None and shrunk.state.isr == (seen.state.leader,)
    assert shrunk.state.leader_epoch == seen.state.leader_epoch
    # a write based on the version seen before loses
    assert b1.write_isr("t", 0, seen, [1, 2]) is None
    assert state(zk_client, "t", 0).isr == (seen.state.leader,)


def test_brokers_learn_their_role_from_state_watches(brokers, zk_client):
    seen1, seen2 = [], []
    b1 = brokers(1, seen=seen1)
    brokers(2, seen=seen2)
    b1.create_topic("t", {0: [1, 2]}, {"min.insync.replicas": "2"})
    wait_until(lambda: any(vs is not None for _, _, vs, _ in seen2), 15, what="b2 sees the state")
    topic, p, vs, replicas = [s for s in seen2 if s[2] is not None][-1]
    assert (topic, p, replicas) == ("t", 0, (1, 2))
    assert vs.state.leader == 1 and vs.state.isr == (1, 2)
    assert b1.topic_config("t") == {"min.insync.replicas": "2"}
    assert json.loads(zk_client.get("/config/topics/t")[0]) == {"version": 1, "config": {"min.insync.replicas": "2"}}
    assert json.loads(zk_client.get("/brokers/topics/t")[0]) == {"version": 1, "partitions": {"0": [1, 2]}}


def test_election_on_broker_loss_and_return(brokers, zk_client):
    b1, b2, b3 = brokers(1), brokers(2), brokers(3)
    wait_until(lambda: b1.is_controller, 15, what="b1 controller")
    rounds = full_rereads(b1)
    b1.create_topic("t", {0: [2, 3, 1]})
    first = wait_until(lambda: state(zk_client, "t", 0), 15, what="state")
    assert first.leader == 2 and first.isr == (2, 3, 1)
    b2.stop()                                                    # the leader goes
    after = wait_until(lambda: (s := state(zk_client, "t", 0)) and s.leader != 2 and s, 15, what="new leader")
    assert after.leader == 3 and after.leader_epoch == first.leader_epoch + 1 and after.isr == (3, 1)
    b3.stop()                                                    # a follower goes: ISR shrinks
    after2 = wait_until(lambda: (s := state(zk_client, "t", 0)) and s.leader == 1 and s, 15, what="isr shrink")
    assert after2.leader_epoch == after.leader_epoch + 1 and after2.isr == (1,)
    brokers(2)                                                   # comes back: not in the ISR, nothing changes
    wait_for_a_full_reread(rounds)
    assert state(zk_client, "t", 0) == after2


def test_a_new_topic_makes_the_controller_read_that_topic_only(brokers, zk_client):
    # keys rotate: a harness run creates a topic a second; re-reading every topic on each creation
    # made the controller's work (and ZooKeeper's) grow with the length of the run
    b1, _ = brokers(1), brokers(2)
    wait_until(lambda: b1.is_controller, 15, what="b1 controller")
    for i in range(5):
        b1.create_topic(f"old{i}", {0: [1, 2], 1: [2, 1]})
    wait_until(lambda: all(state(zk_client, f"old{i}", p) for i in range(5) for p in (0, 1)), 15,
               what="old topics' states")
    read = []
    real = b1.partition_state
    b1.partition_state = lambda topic, p: read.append(topic) or real(topic, p)
    b1.create_topic("new", {0: [2, 1], 1: [1, 2]})
    assert wait_until(lambda: state(zk_client, "new", 0) and state(zk_client, "new", 1), 15,
                      what="the new topic's states")
    assert set(read) == {"new"}
    # brokers coming and going still make it look at everything
    brokers(3)
    wait_until(lambda: {f"old{i}" for i in range(5)} <= set(read), 15, what="a full round")


@pytest.mark.parametrize("unclean", ["false", "true"])
def test_unclean_election_on_and_off(brokers, zk_client, unclean):
    b1, b2 = brokers(1), brokers(2)
    wait_until(lambda: b1.is_controller, 15, what="b1 controller")
    rounds = full_rereads(b1)
    b1.create_topic("t", {0: [2, 1]}, {"unclean.leader.election.enable": unclean})
    first = wait_until(lambda: b2.partition_state("t", 0), 15, what="state")
    assert first.state.leader == 2
    # the leader drops the follower out of the ISR (as on replica.lag.time.max.ms)
    assert b2.write_isr("t", 0, first, [2]) is not None
    b2.stop()                                                    # the only ISR member goes
    if unclean == "true":
        s = wait_until(lambda: (s := state(zk_client, "t", 0)) and s.leader == 1 and s, 15, what="unclean leader")
        assert s.isr == (1,) and s.leader_epoch == first.state.leader_epoch + 1
    else:
        s = wait_until(lambda: (s := state(zk_client, "t", 0)) and s.leader == -1 and s, 15, what="offline")
        assert s.isr == (2,) and s.leader_epoch == first.state.leader_epoch + 1
        wait_for_a_full_reread(rounds)
        assert state(zk_client, "t", 0) == s                     # stays offline
        brokers(2)                                               # the ISR member returns: it leads again
        back = wait_until(lambda: (x := state(zk_client, "t", 0)) and x.leader == 2 and x, 15, what="leader back")
        assert back.leader_epoch == s.leader_epoch + 1 and back.isr == (2,)


def test_broker_default_for_unclean_applies_without_topic_value(brokers, zk_client):
    b1 = brokers(1, unclean_default=True)
    wait_until(lambda: b1.is_controller, 15, what="b1 controller")
    b2 = brokers(2, unclean_default=True)
    b1.create_topic("t", {0: [2, 1]})
    first = wait_until(lambda: b2.partition_state("t", 0), 15, what="state")
    assert b2.write_isr("t", 0, first, [2]) is not None
    b2.stop()
    wait_until(lambda: (s := state(zk_client, "t", 0)) and s.leader == 1, 15, what="unclean leader")


def test_controlled_shutdown_moves_leadership_first(brokers, zk_client):
    b1, b2 = brokers(1), brokers(2)
    wait_until(lambda: b1.is_controller, 15, what="b1 controller")
    b1.create_topic("t", {0: [2, 1], 1: [1, 2]})
    wait_until(lambda: state(zk_client, "t", 0) and state(zk_client, "t", 1), 15, what="states")
    assert b2.controlled_shutdown(timeout=10) == []
    s0, s1 = state(zk_client, "t", 0), state(zk_client, "t", 1)
    assert s0.leader == 1 and s0.isr == (1,) and s0.leader_epoch == 1
    assert s1.leader == 1 and s1.isr == (1,)                     # left the ISR as it follows nothing now
    assert zk_client.exists("/brokers/ids/2") is not None       # still registered while it finishes


def test_restarted_leader_gets_a_new_epoch(brokers, zookeeper, zk_client):
    b1 = brokers(1)
    wait_until(lambda: b1.is_controller, 15, what="b1 controller")
    seen2 = []
    b2 = brokers(2, seen=seen2)
    b1.create_topic("t", {0: [2, 1]})
    first = wait_until(lambda: state(zk_client, "t", 0), 15, what="state")
    assert first.leader == 2
    # broker 2 loses its session and comes back as the same id; the controller may never see
    # it missing, yet it must not resume the old epoch
    expire_session(zookeeper.connect_string, b2)
    s = wait_until(lambda: (s := state(zk_client, "t", 0)) and s.leader_epoch > first.leader_epoch and s, 15,
                   what="re-election")
    assert s.leader in (1, 2)
    # broker 2's watches were re-armed on its new session: it sees the new epoch too
    wait_until(lambda: any(vs is not None and vs.state.leader_epoch == s.leader_epoch for _, _, vs, _ in seen2), 15,
               what="b2 sees the new epoch")
    # its new registration is the znode's (the worker thread records it just after the create returns: wait, as
    # a slow machine can run this check in between; until then the broker does not lead, replica_manager._role)
    wait_until(lambda: b2.registration_zxid > 0 and zk_client.get("/brokers/ids/2")[1].czxid == b2.registration_zxid,
               15, what="b2 records its new registration")


def test_registration_survives_a_connection_lost_to_a_stalled_zookeeper(zookeeper, brokers, zk_client):
    """A ZooKeeper member stalled (SIGSTOP) while a broker registers: the create fails with ConnectionLoss,
    kazoo reconnects after SIGCONT, and the broker registers instead of dying at start."""
    import threading
    from kazoo.exceptions import ConnectionLoss
    zk_node = zookeeper.nodes[0]
    losses = []
    real_create = KazooClient.create

    def create(self, path, *a, **kw):
        if path == "/brokers/ids/7" and not losses:
            zk_node.signal("zookeeper", "STOP")
            threading.Timer(4.0, lambda: zk_node.signal("zookeeper", "CONT")).start()
            try:
                return real_create(self, path, *a, **kw)
            except ConnectionLoss:
                losses.append(path)
                raise
        return real_create(self, path, *a, **kw)
    KazooClient.create = create
    try:
        b = brokers(7)
    finally:
        KazooClient.create = real_create
        zk_node.signal("zookeeper", "CONT")
    assert losses == ["/brokers/ids/7"]          # the stall really cost the connection
    data, stat = zk_client.get("/brokers/ids/7")
    assert stat.ephemeralOwner == b.zk.client_id[0] and json.loads(data)["port"] == 9007


def test_a_restarted_broker_whose_session_expires_while_it_waits_for_its_old_node_still_registers(zookeeper, zk_client):
    """A broker restarted right after a crash waits for its old session's /brokers/ids node to expire; if
    its own new session expires meanwhile (it was cut off), it registers with the next session, not dies."""
    import threading
    old = KazooClient(hosts=zookeeper.connect_string, timeout=30)
    old.start(timeout=15)
    old.ensure_path("/brokers/ids")
    old.create("/brokers/ids/8", b"{}", ephemeral=True)        # the crashed predecessor's node
    b = ZkBroker(zookeeper.connect_string, 8, "127.0.0.1", 9008, session_timeout_ms=4000)
    looked_at_the_old_node = []                                  # register() reads a node it found existing
    real_get = b.zk.get
    b.zk.get = lambda path, *a, **kw: looked_at_the_old_node.append(path) or real_get(path, *a, **kw)
    started = threading.Thread(target=b.start, kwargs={"timeout": 30})
    try:
        started.start()
        wait_until(lambda: "/brokers/ids/8" in looked_at_the_old_node, 15, what="the new broker waits on NodeExists")
        first_session = b.zk.client_id[0]
        expire_session(zookeeper.connect_string, b)              # its own session is gone
        wait_until(lambda: b.zk.client_id is not None and b.zk.client_id[0] != first_session, 15,
                   what="a new session")
        old.stop()                                               # the old node goes at last
        old.close()
        started.join(30)
        assert not started.is_alive()
        _, stat = zk_client.get("/brokers/ids/8")
        assert stat.ephemeralOwner == b.zk.client_id[0] != first_session
    finally:
        started.join(30)
        b.stop()


def test_a_state_change_whose_delivery_loses_the_zookeeper_connection_still_reaches_the_broker(brokers, zk_client):
    """Seen in a nightly run under partitions: the broker the controller had just elected lost its ZooKeeper
    connection inside the state watch's callback (it reads the topic's replicas there), the exception escaped
    into kazoo, and the broker never learned it led: the partition stayed leaderless to the end of the run.
    Here the read fails once, as it did, on a real ZooKeeper."""
    seen2 = []
    b1 = brokers(1)
    b2 = brokers(2, seen=seen2)
    real = b2.topic_assignment
    failures = []

    def flaky(topic):
        if not failures:
            failures.append(topic)
            raise ConnectionLoss()
        return real(topic)
    b2.topic_assignment = flaky
    b1.create_topic("t", {0: [2, 1]}, {})
    assert wait_until(lambda: any(vs is not None and vs.state.leader == 2 for _, _, vs, _ in seen2), 15,
                      what="broker 2 learns it leads t-0")
    assert failures == ["t"]
    # and the watch lives on: the next change reaches the broker too
    current = b1.partition_state("t", 0)
    b2.write_isr("t", 0, current, (2,))
    assert wait_until(lambda: any(vs is not None and vs.state.isr == (2,) for _, _, vs, _ in seen2), 15,
                      what="broker 2 sees the ISR it wrote")

"""broker/controller.py against a real ZooKeeper (the `zookeeper` fixture of tests/conftest.py)."""
from __future__ import annotations

import json
import time

import pytest
from kazoo.client import KazooClient

from broker.controller import (
    CONTROLLER, CONTROLLER_EPOCH, PartitionState, StateWrite, ZkBroker, state_path,
)


def wait_for(what, predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


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


def controller_of(zk) -> tuple[int, int] | None:
    if zk.exists(CONTROLLER) is None:
        return None
    return json.loads(zk.get(CONTROLLER)[0])["brokerid"], int(zk.get(CONTROLLER_EPOCH)[0])


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
    assert wait_for("controller", lambda: controller_of(zk_client)) == (1, 1)
    b.stop()
    wait_for("registration removed", lambda: zk_client.exists("/brokers/ids/1") is None)
    wait_for("controller removed", lambda: zk_client.exists(CONTROLLER) is None)


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
    first, epoch = wait_for("a controller", lambda: controller_of(zk_client))
    old = {1: b1, 2: b2, 3: b3}[first]
    assert old.is_controller
    expire_session(zookeeper.connect_string, old)
    new, new_epoch = wait_for("another controller", lambda: (c := controller_of(zk_client)) and c[0] != first and c)
    assert new_epoch == epoch + 1
    wait_for("old controller resigned", lambda: not old.is_controller)
    # the expired broker registers again with its new session
    wait_for("re-registration", lambda: zk_client.exists(f"/brokers/ids/{first}") is not None)
    assert zk_client.get(f"/brokers/ids/{first}")[1].ephemeralOwner == old.zk.client_id[0]


def test_stale_controller_write_is_rejected(brokers, zookeeper, zk_client):
    b1 = brokers(1)
    wait_for("b1 controller", lambda: b1.is_controller)
    b2 = brokers(2)
    b1.create_topic("t", {0: [1, 2]})
    wait_for("state", lambda: state(zk_client, "t", 0))
    stale_epoch_version = b1._controller_epoch_version
    expire_session(zookeeper.connect_string, b1)
    wait_for("b2 controller", lambda: b2.is_controller)
    wait_for("b1 back with a new session", lambda: zk_client.exists("/brokers/ids/1") is not None)
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
    seen = wait_for("state", lambda: b1.partition_state("t", 0))
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
    wait_for("b2 sees the state", lambda: any(vs is not None for _, _, vs, _ in seen2))
    topic, p, vs, replicas = [s for s in seen2 if s[2] is not None][-1]
    assert (topic, p, replicas) == ("t", 0, (1, 2))
    assert vs.state.leader == 1 and vs.state.isr == (1, 2)
    assert b1.topic_config("t") == {"min.insync.replicas": "2"}
    assert json.loads(zk_client.get("/config/topics/t")[0]) == {"version": 1, "config": {"min.insync.replicas": "2"}}
    assert json.loads(zk_client.get("/brokers/topics/t")[0]) == {"version": 1, "partitions": {"0": [1, 2]}}


def test_election_on_broker_loss_and_return(brokers, zk_client):
    b1, b2, b3 = brokers(1), brokers(2), brokers(3)
    wait_for("b1 controller", lambda: b1.is_controller)
    b1.create_topic("t", {0: [2, 3, 1]})
    first = wait_for("state", lambda: state(zk_client, "t", 0))
    assert first.leader == 2 and first.isr == (2, 3, 1)
    b2.stop()                                                    # the leader goes
    after = wait_for("new leader", lambda: (s := state(zk_client, "t", 0)) and s.leader != 2 and s)
    assert after.leader == 3 and after.leader_epoch == first.leader_epoch + 1 and after.isr == (3, 1)
    b3.stop()                                                    # a follower goes: ISR shrinks
    after2 = wait_for("isr shrink", lambda: (s := state(zk_client, "t", 0)) and s.leader == 1 and s)
    assert after2.leader_epoch == after.leader_epoch + 1 and after2.isr == (1,)
    brokers(2)                                                   # comes back: not in the ISR, nothing changes
    time.sleep(1.0)
    assert state(zk_client, "t", 0) == after2


def test_a_new_topic_makes_the_controller_read_that_topic_only(brokers, zk_client):
    # keys rotate: a harness run creates a topic a second; re-reading every topic on each creation
    # made the controller's work (and ZooKeeper's) grow with the length of the run
    b1, _ = brokers(1), brokers(2)
    wait_for("b1 controller", lambda: b1.is_controller)
    for i in range(5):
        b1.create_topic(f"old{i}", {0: [1, 2], 1: [2, 1]})
    wait_for("old topics' states", lambda: all(state(zk_client, f"old{i}", p) for i in range(5) for p in (0, 1)))
    read = []
    real = b1.partition_state
    b1.partition_state = lambda topic, p: read.append(topic) or real(topic, p)
    b1.create_topic("new", {0: [2, 1], 1: [1, 2]})
    assert wait_for("the new topic's states", lambda: state(zk_client, "new", 0) and state(zk_client, "new", 1))
    assert set(read) == {"new"}
    # brokers coming and going still make it look at everything
    brokers(3)
    wait_for("a full round", lambda: {f"old{i}" for i in range(5)} <= set(read))


@pytest.mark.parametrize("unclean", ["false", "true"])
def test_unclean_election_on_and_off(brokers, zk_client, unclean):
    b1, b2 = brokers(1), brokers(2)
    wait_for("b1 controller", lambda: b1.is_controller)
    b1.create_topic("t", {0: [2, 1]}, {"unclean.leader.election.enable": unclean})
    first = wait_for("state", lambda: b2.partition_state("t", 0))
    assert first.state.leader == 2
    # the leader drops the follower out of the ISR (as on replica.lag.time.max.ms)
    assert b2.write_isr("t", 0, first, [2]) is not None
    b2.stop()                                                    # the only ISR member goes
    if unclean == "true":
        s = wait_for("unclean leader", lambda: (s := state(zk_client, "t", 0)) and s.leader == 1 and s)
        assert s.isr == (1,) and s.leader_epoch == first.state.leader_epoch + 1
    else:
        s = wait_for("offline", lambda: (s := state(zk_client, "t", 0)) and s.leader == -1 and s)
        assert s.isr == (2,) and s.leader_epoch == first.state.leader_epoch + 1
        time.sleep(1.0)
        assert state(zk_client, "t", 0) == s                     # stays offline
        brokers(2)                                               # the ISR member returns: it leads again
        back = wait_for("leader back", lambda: (x := state(zk_client, "t", 0)) and x.leader == 2 and x)
        assert back.leader_epoch == s.leader_epoch + 1 and back.isr == (2,)


def test_broker_default_for_unclean_applies_without_topic_value(brokers, zk_client):
    b1 = brokers(1, unclean_default=True)
    wait_for("b1 controller", lambda: b1.is_controller)
    b2 = brokers(2, unclean_default=True)
    b1.create_topic("t", {0: [2, 1]})
    first = wait_for("state", lambda: b2.partition_state("t", 0))
    assert b2.write_isr("t", 0, first, [2]) is not None
    b2.stop()
    wait_for("unclean leader", lambda: (s := state(zk_client, "t", 0)) and s.leader == 1)


def test_controlled_shutdown_moves_leadership_first(brokers, zk_client):
    b1, b2 = brokers(1), brokers(2)
    wait_for("b1 controller", lambda: b1.is_controller)
    b1.create_topic("t", {0: [2, 1], 1: [1, 2]})
    wait_for("states", lambda: state(zk_client, "t", 0) and state(zk_client, "t", 1))
    assert b2.controlled_shutdown(timeout=10) == []
    s0, s1 = state(zk_client, "t", 0), state(zk_client, "t", 1)
    assert s0.leader == 1 and s0.isr == (1,) and s0.leader_epoch == 1
    assert s1.leader == 1 and s1.isr == (1,)                     # left the ISR as it follows nothing now
    assert zk_client.exists("/brokers/ids/2") is not None       # still registered while it finishes


def test_restarted_leader_gets_a_new_epoch(brokers, zookeeper, zk_client):
    b1 = brokers(1)
    wait_for("b1 controller", lambda: b1.is_controller)
    seen2 = []
    b2 = brokers(2, seen=seen2)
    b1.create_topic("t", {0: [2, 1]})
    first = wait_for("state", lambda: state(zk_client, "t", 0))
    assert first.leader == 2
    # broker 2 loses its session and comes back as the same id; the controller may never see
    # it missing, yet it must not resume the old epoch
    expire_session(zookeeper.connect_string, b2)
    s = wait_for("re-election", lambda: (s := state(zk_client, "t", 0)) and s.leader_epoch > first.leader_epoch and s)
    assert s.leader in (1, 2)
    # broker 2's watches were re-armed on its new session: it sees the new epoch too
    wait_for("b2 sees the new epoch", lambda: any(vs is not None and vs.state.leader_epoch == s.leader_epoch
                                                  for _, _, vs, _ in seen2))
    # its new registration is the znode's (the worker thread records it just after the create returns: wait, as
    # a slow machine can run this check in between; until then the broker does not lead, replica_manager._role)
    wait_for("b2 records its new registration",
             lambda: b2.registration_zxid > 0 and zk_client.get("/brokers/ids/2")[1].czxid == b2.registration_zxid)


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
    started = threading.Thread(target=b.start, kwargs={"timeout": 30})
    try:
        started.start()
        wait_for("the new broker to connect", lambda: b.zk.connected and b.zk.client_id is not None)
        first_session = b.zk.client_id[0]
        time.sleep(0.5)                                          # it is waiting on NodeExists now
        expire_session(zookeeper.connect_string, b)              # its own session is gone
        wait_for("a new session", lambda: b.zk.client_id is not None and b.zk.client_id[0] != first_session)
        old.stop()                                               # the old node goes at last
        old.close()
        started.join(30)
        assert not started.is_alive()
        _, stat = zk_client.get("/brokers/ids/8")
        assert stat.ephemeralOwner == b.zk.client_id[0] != first_session
    finally:
        started.join(30)
        b.stop()

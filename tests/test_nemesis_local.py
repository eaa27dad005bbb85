"""The kill fault on real broker processes of the local backend."""
import random
import time

import pytest

from clusters import create_cluster
from clusters.base import ClusterSpec
from nemesis.faults import KillFault
from nemesis.schedule import Nemesis


@pytest.fixture
def local_cluster(tmp_path):
    cluster = create_cluster(ClusterSpec(backend="local", nodes=3, brokers=False, work_dir=tmp_path,
                                         run_id="test-kill", capabilities=frozenset()))
    try:
        cluster.start()
        for node in cluster.nodes:
            cluster.start_broker(node)
        yield cluster
    finally:
        cluster.teardown()


def wait_until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_kill_the_leader_of_a_key_then_restart_it(local_cluster):
    n = {node.name: node for node in local_cluster.nodes}
    assert wait_until(lambda: all(node.is_running("broker") for node in n.values()))
    fault = KillFault(local_cluster, "leader", leader_of=lambda key: {"4": 2}.get(key), active_keys=lambda: ["4"])
    value = fault.start(random.Random(0))
    assert value == {"nodes": ["n2"], "key": "4", "leader": 2}
    assert wait_until(lambda: not n["n2"].is_running("broker"))
    assert n["n1"].is_running("broker") and n["n3"].is_running("broker")
    assert fault.stop() == {"nodes": ["n2"]}
    assert wait_until(lambda: n["n2"].is_running("broker"))


def test_nemesis_records_start_and_stop_and_heal_restarts_what_is_down(local_cluster):
    events = []
    fault = KillFault(local_cluster, "random")
    nemesis = Nemesis({"kill": fault}, seed=3, interval=0.4, append=events.append)
    nemesis.start()
    assert wait_until(lambda: any(e["type"] == "info" and e["f"] == "kill" for e in events), 5)
    nemesis.heal()
    nemesis.stop()
    fs = [(e["type"], e["f"]) for e in events]
    assert fs[:2] == [("invoke", "kill"), ("info", "kill")]
    assert fs[-2:] == [("invoke", "start"), ("info", "start")]  # the last fault was healed
    assert all(e["process"] == "nemesis" for e in events)
    assert not fault.active
    assert wait_until(lambda: all(node.is_running("broker") for node in local_cluster.nodes))

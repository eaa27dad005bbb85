"""The kill and pause nemeses on real broker processes of the local backend."""
import random

import pytest

from clusters import create_cluster
from clusters.base import ClusterSpec
from nemesis.core import Context
from nemesis.faults import ProcessNemesis
from nemesis.packages import PACKAGES
from nemesis.schedule import NemesisRunner
from conftest import wait_until


class OneKeyRoles:
    """Key "4" is led by broker 2."""

    def leader_of(self, key): return {"4": 2}.get(key)
    def replicas_of(self, key): return [1, 2, 3]
    def isr_of(self, key): return [1, 2, 3]
    def controller(self): return 1
    def coordinator_of(self, group=None): return 1
    def hot_keys(self): return ["4"]


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


def process_state(node) -> str:
    pid = node.pid("broker")
    return node.run(f"grep ^State: /proc/{pid}/status").stdout.split()[1]


def test_kill_the_leader_of_a_hot_key_then_restart_it(local_cluster):
    n = {node.name: node for node in local_cluster.nodes}
    assert wait_until(lambda: all(node.is_running("broker") for node in n.values()))
    ctx = Context(local_cluster, random.Random(0), OneKeyRoles())
    kill = ProcessNemesis("kill", "start", "broker", "kill")
    value = kill.invoke(ctx, {"f": "kill", "value": "leader"})
    assert value == {"target": "leader", "nodes": ["n2"], "key": "4", "leader": 2, "isr": [1, 2, 3]}
    assert wait_until(lambda: not n["n2"].is_running("broker"))
    assert n["n1"].is_running("broker") and n["n3"].is_running("broker")
    assert kill.invoke(ctx, {"f": "start", "value": None}) == {"nodes": ["n2"]}
    assert wait_until(lambda: n["n2"].is_running("broker"))


def test_pause_stops_the_broker_process_and_resume_continues_it(local_cluster):
    ctx = Context(local_cluster, random.Random(0), OneKeyRoles())
    pause = ProcessNemesis("pause", "resume", "broker", "pause")
    value = pause.invoke(ctx, {"f": "pause", "value": "controller"})
    assert value["nodes"] == ["n1"] and value["controller"] == 1
    node = local_cluster.nodes[0]
    assert wait_until(lambda: process_state(node) == "T")       # stopped, not dead
    pause.teardown(ctx)                                          # the heal path of every exit
    assert wait_until(lambda: process_state(node) in ("S", "R"))
    assert node.is_running("broker")


def test_the_runner_records_each_op_and_heal_restarts_what_is_down(local_cluster):
    events = []
    ctx = Context(local_cluster, random.Random(0), OneKeyRoles())
    runner = NemesisRunner([(PACKAGES["kill"], "one"), (PACKAGES["pause"], "leader")], ctx,
                           [{"time": 0.0, "f": "kill", "value": "n3"}, {"time": 0.2, "f": "pause", "value": "leader"}],
                           events.append)
    runner.setup()
    runner.start()
    assert wait_until(lambda: len([e for e in events if e["type"] == "info"]) == 2, 10)
    assert runner.active_names() == ["kill", "pause"]               # two faults at once
    runner.heal()
    fs = [(e["type"], e["f"]) for e in events]
    assert fs[:4] == [("invoke", "kill"), ("info", "kill"), ("invoke", "pause"), ("info", "pause")]
    assert sorted(fs[4:]) == sorted([("invoke", "start"), ("info", "start"), ("invoke", "resume"), ("info", "resume")])
    assert all(e["process"] == "nemesis" for e in events)
    assert runner.active_names() == []
    assert wait_until(lambda: all(node.is_running("broker") for node in local_cluster.nodes))
    assert process_state(local_cluster.nodes[1]) in ("S", "R")


def test_a_fault_this_environment_cannot_do_fails_setup_with_the_fix(local_cluster):
    from nemesis.core import NemesisUnavailable
    from nemesis.faults import ClockNemesis
    ctx = Context(local_cluster, random.Random(0), OneKeyRoles())
    with pytest.raises(NemesisUnavailable, match="acked doctor"):
        ClockNemesis().setup(ctx)   # local brokers run without libfaketime (and the clock capability)

"""Partition shapes, packages, targets, plans and replay, without a cluster (faults on real nodes:
tests/test_nemesis_docker.py, tests/test_nemesis_local.py)."""
import itertools
import random

import networkx as nx
import orjson
import pytest

from nemesis.core import Compose, Context, Nemesis, check_target, resolve
from nemesis.packages import PACKAGES, package_of_f, parse
from nemesis.schedule import NemesisRunner, plan, replay_plan
from nemesis.shapes import SHAPES, bridge, components, halves, isolate_one, make_grudge, majorities_ring

NAMES = ["n1", "n2", "n3", "n4", "n5"]


def test_halves_cut_every_pair_across_and_none_within():
    g = halves(NAMES, random.Random(1))
    groups = components(g)
    assert sorted(len(c) for c in groups) == [2, 3]
    for a, b in itertools.combinations(NAMES, 2):
        same = any(a in c and b in c for c in groups)
        assert g.has_edge(a, b) != same


def test_shapes_are_seeded():
    for shape in SHAPES.values():
        assert nx.utils.graphs_equal(shape(NAMES, random.Random(4)), shape(NAMES, random.Random(4)))
    assert {tuple(map(tuple, components(halves(NAMES, random.Random(s))))) for s in range(30)}.__len__() > 3


def test_isolate_one_and_bridge():
    g = isolate_one(NAMES, random.Random(2))
    lone = [n for n in NAMES if g.degree(n) == 4]
    assert len(lone) == 1 and g.number_of_edges() == 4
    b = bridge(NAMES, random.Random(2))
    middle = [n for n in NAMES if b.degree(n) == 0]
    assert len(middle) == 1 and b.number_of_edges() == 4  # 2 x 2 across, the bridge node sees everyone


def test_majorities_ring_every_node_sees_a_distinct_majority():
    g = majorities_ring(NAMES, random.Random(3))
    seen = {n: frozenset(set(NAMES) - set(g.neighbors(n))) for n in NAMES}
    assert all(len(s) >= 3 for s in seen.values())
    assert len(set(seen.values())) == len(NAMES)


class FakeNode:
    def __init__(self, name):
        self.name, self.broker_id = name, int(name[1:])


class FakeCluster:
    def __init__(self, n=3):
        self.nodes = [FakeNode(f"n{i}") for i in range(1, n + 1)]


class FakeRoles:
    """Key "6" led by broker 1 with replicas 1, 2, 3; the controller is 3."""

    def leader_of(self, key): return 1
    def replicas_of(self, key): return [1, 2, 3]
    def isr_of(self, key): return [1, 2, 3]
    def controller(self): return 3
    def coordinator_of(self, group=None): return 2
    def hot_keys(self): return ["6"]


def ctx(seed=0):
    return Context(FakeCluster(), random.Random(seed), FakeRoles())


def test_plan_is_seeded_and_every_stop_follows_its_start():
    pkgs = [(PACKAGES["kill"], None), (PACKAGES["partition"], None), (PACKAGES["pause"], None)]
    ops = plan(pkgs, 5, 6.0, 120.0)
    assert ops == plan(pkgs, 5, 6.0, 120.0)
    assert ops != plan(pkgs, 6, 6.0, 120.0)
    assert all(0 <= op["time"] < 120 for op in ops)
    active = {}
    overlapped = False
    for op in ops:
        pkg, role = package_of_f(op["f"])
        if role == "start":
            assert pkg.name not in active, "a package started twice without a stop"
            overlapped |= bool(active)
            active[pkg.name] = op["time"]
        else:
            assert pkg.name in active
            assert 3.0 <= op["time"] - active.pop(pkg.name) <= 9.0
    assert overlapped, "faults of different packages never overlapped in 120 s"
    started = [package_of_f(op["f"])[0].name for op in ops if package_of_f(op["f"])[1] == "start"]
    assert set(started[:3]) == {"kill", "partition", "pause"}  # a shuffled bag: each package in the first round


def test_the_alternate_schedule_never_has_two_faults_at_once():
    pkgs = [(PACKAGES["kill"], None), (PACKAGES["partition"], None), (PACKAGES["pause"], None)]
    active = 0
    ops = plan(pkgs, 5, 6.0, 120.0, "alternate")
    for op in ops:
        active += 1 if package_of_f(op["f"])[1] == "start" else -1
        assert active in (0, 1)
    assert len(ops) >= 10
    with pytest.raises(ValueError, match="unknown schedule"):
        plan(pkgs, 5, 6.0, 10.0, "sometimes")


def test_a_pinned_package_asks_for_its_pin_every_time():
    ops = plan([(PACKAGES["partition"], "leader-from-followers")], 1, 6.0, 60.0)
    starts = [op for op in ops if op["f"] == "start-partition"]
    assert starts and all(op["value"]["shape"] == "leader-from-followers" for op in starts)


def test_parse_names_the_fix_for_unknown_packages_and_choices():
    assert parse("kill:controller") == (PACKAGES["kill"], "controller")
    assert parse("kill:n2") == (PACKAGES["kill"], "n2")
    with pytest.raises(ValueError, match="unknown nemesis 'kil'; choose from: kill"):
        parse("kil")
    with pytest.raises(ValueError, match="partition: unknown choice 'sideways'"):
        parse("partition:sideways")


def test_two_nemeses_may_not_claim_the_same_op():
    class A(Nemesis):
        fs = frozenset({"kill", "start"})
    with pytest.raises(ValueError, match="two nemeses claim the op"):
        Compose([A(), A()])
    assert Compose([A()]).fs == {"kill", "start"}


def test_every_op_of_the_registry_belongs_to_exactly_one_package():
    seen = {}
    for pkg in PACKAGES.values():
        for f in pkg.fs:
            assert f not in seen, f"{f} in {seen.get(f)} and {pkg.name}"
            seen[f] = pkg.name
    composed = Compose(p.make() for p in PACKAGES.values())  # no f claimed twice
    assert composed.fs == set(seen)


def test_targets_resolve_by_role_and_by_count():
    c = ctx()
    nodes, seen = resolve(c, "leader")
    assert [n.name for n in nodes] == ["n1"] and seen == {"key": "6", "leader": 1, "isr": [1, 2, 3]}
    assert [n.name for n in resolve(c, "followers-of:6")[0]] == ["n2", "n3"]
    assert [n.name for n in resolve(c, "controller")[0]] == ["n3"]
    assert [n.name for n in resolve(c, "coordinator")[0]] == ["n2"]
    assert len(resolve(c, "minority")[0]) == 1 and len(resolve(c, "majority")[0]) == 2
    assert [n.name for n in resolve(c, "n1+n3")[0]] == ["n1", "n3"]
    check_target("leader-of:7")
    with pytest.raises(ValueError, match="unknown target"):
        check_target("leeder")


def test_a_role_that_cannot_be_resolved_falls_back_to_one_node_and_says_so():
    c = Context(FakeCluster(), random.Random(0))  # NoRoles: nobody leads anything
    nodes, seen = resolve(c, "controller")
    assert len(nodes) == 1 and "could not be resolved" in seen["fallback"]


def test_leader_from_followers_cuts_only_the_broker_port_between_the_leader_and_its_followers():
    g, seen = make_grudge(ctx(), {"shape": "leader-from-followers"})
    assert sorted(map(sorted, g.edges())) == [["n1", "n2"], ["n1", "n3"]]
    assert all(g.edges[e]["ports"] == [9092] for e in g.edges())
    assert seen["leader"] == 1


def test_clients_placement_cuts_the_clients_off_the_other_side():
    g, _ = make_grudge(ctx(), {"shape": "leader", "clients": "minority"})
    assert sorted(g.neighbors("clients")) == ["n2", "n3"]   # the clients reach the isolated leader only
    g, _ = make_grudge(ctx(), {"shape": "leader", "clients": "majority"})
    assert sorted(g.neighbors("clients")) == ["n1"]
    g, _ = make_grudge(ctx(), {"shape": "leader"})
    assert "clients" not in g


class Recorder(Nemesis):
    """Records what it is asked; resolves targets like a real fault."""

    fs = frozenset({"kill", "start"})

    def __init__(self):
        self.calls = []

    def invoke(self, c, op):
        self.calls.append(op)
        if op["f"] == "kill":
            nodes, seen = resolve(c, op["value"])
            return {"target": op["value"], "nodes": sorted(n.name for n in nodes), **seen}
        return {"nodes": []}


def test_replay_fixes_random_targets_to_the_nodes_hit_and_keeps_role_targets(tmp_path):
    events = []
    runner = NemesisRunner([(PACKAGES["kill"], None)], ctx(3), [
        {"time": 0.0, "f": "kill", "value": "one"}, {"time": 0.05, "f": "start", "value": None},
        {"time": 0.1, "f": "kill", "value": "leader"}, {"time": 0.15, "f": "start", "value": None}], events.append)
    runner.nemesis = Compose([Recorder()])
    runner.start()
    runner._thread.join(5)
    runner.heal()
    runner.write(tmp_path / "nemesis.json", 3, 6.0)
    doc = orjson.loads((tmp_path / "nemesis.json").read_bytes())
    assert [op["f"] for op in doc["ops"]] == ["kill", "start", "kill", "start"]
    hit = doc["ops"][0]["resolved"]["nodes"]
    replayed = replay_plan(tmp_path / "nemesis.json")
    assert replayed[0]["value"] == "+".join(hit)          # random: the same node again
    assert replayed[2]["value"] == "leader"               # role: whoever leads then
    assert all(abs(a["time"] - b["time"]) < 0.2 for a, b in zip(replayed, doc["ops"]))
    assert [(e["type"], e["f"]) for e in events][:2] == [("invoke", "kill"), ("info", "kill")]
    assert all(e["process"] == "nemesis" for e in events)

"""Partition shapes and the fault schedule, without a cluster (faults on real nodes: tests/test_harness_e2e.py)."""
import itertools
import random

import networkx as nx

from nemesis.schedule import schedule
from nemesis.shapes import SHAPES, bridge, components, halves, isolate_one, majorities_ring

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


def test_schedule_alternates_start_and_stop_with_delays_around_the_interval():
    items = list(itertools.islice(schedule(5, ["kill", "partition"], 10.0), 200))
    assert items == list(itertools.islice(schedule(5, ["kill", "partition"], 10.0), 200))
    assert [a for _, a, _ in items] == ["start", "stop"] * 100
    starts = [f for _, a, f in items if a == "start"]
    assert all(sorted(starts[i:i + 2]) == ["kill", "partition"] for i in range(0, len(starts), 2))  # a shuffled bag
    assert len({tuple(starts[i:i + 2]) for i in range(0, len(starts), 2)}) == 2  # in both orders over the run
    assert all(5.0 <= d <= 15.0 for d, _, _ in items)
    assert list(schedule(5, [], 10.0)) == []

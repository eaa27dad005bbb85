"""Network partition shapes as networkx graphs.

A shape is a "grudge" graph over node names: an edge (a, b) means a and b
cannot talk to each other (Jepsen's grudges). The plain shapes are pure
functions of the node names and a seeded random.Random, so a schedule is
reproducible; the role shapes (`leader`, `controller`, `coordinator`,
`leader-from-followers`) ask the workload's Roles who plays the part when the
op runs. An edge may carry `ports`: only the brokers' port is cut between its
ends, so ZooKeeper on the same nodes still talks. The pseudo-node `clients`
stands for the harness's clients (`clients` placement: `all` reach every
broker, `majority` / `minority` only the brokers of that side).
"""
from __future__ import annotations

import random

import networkx as nx


def _grudge(names: list[str], cut: list[tuple[str, str]]) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(names)
    g.add_edges_from(cut)
    return g


def halves(names: list[str], rng: random.Random) -> nx.Graph:
    """Random halves: every node of one half loses every node of the other (the smaller half is the minority)."""
    shuffled = list(names)
    rng.shuffle(shuffled)
    mid = len(shuffled) // 2
    a, b = shuffled[:mid], shuffled[mid:]
    return _grudge(names, [(x, y) for x in a for y in b])


def isolate_one(names: list[str], rng: random.Random) -> nx.Graph:
    """One random node cut off from all the others."""
    lone = rng.choice(names)
    return _grudge(names, [(lone, y) for y in names if y != lone])


def bridge(names: list[str], rng: random.Random) -> nx.Graph:
    """Two halves that cannot talk, and one node that still talks to both."""
    shuffled = list(names)
    rng.shuffle(shuffled)
    middle, rest = shuffled[0], shuffled[1:]
    mid = len(rest) // 2
    a, b = rest[:mid], rest[mid:]
    return _grudge(names, [(x, y) for x in a for y in b])


def majorities_ring(names: list[str], rng: random.Random) -> nx.Graph:
    """Every node sees a majority, but no two nodes see the same majority (Jepsen's majorities-ring)."""
    shuffled = list(names)
    rng.shuffle(shuffled)
    n = len(shuffled)
    majority = n // 2 + 1
    reach = -(-(majority - 1) // 2)  # neighbours kept on each side, so that each node sees a majority
    ring = nx.circulant_graph(n, range(1, reach + 1))
    keep = {(shuffled[i], shuffled[j]) for i, j in ring.edges()}
    cut = [(x, y) for i, x in enumerate(shuffled) for y in shuffled[i + 1:] if (x, y) not in keep and (y, x) not in keep]
    return _grudge(names, cut)


SHAPES = {"halves": halves, "one": isolate_one, "bridge": bridge, "majorities-ring": majorities_ring}
#: shapes aimed at Kafka roles, resolved when the op runs
ROLE_SHAPES = ("leader", "controller", "coordinator", "leader-from-followers")
ALL_SHAPES = (*SHAPES, *ROLE_SHAPES)
CLIENT_PLACEMENTS = ("all", "majority", "minority")


def make_grudge(ctx, spec: dict) -> tuple[nx.Graph, dict]:
    """The grudge a partition op asks for ({"shape": ..., "clients": ...}), and what was observed to aim it."""
    from nemesis.core import resolve
    from nemesis.faults import CLIENTS
    shape = spec.get("shape", "halves")
    names = sorted(n.name for n in ctx.nodes)
    seen: dict = {}
    if shape in SHAPES:
        g = SHAPES[shape](names, ctx.rng)
    elif shape == "cut":  # an explicit grudge: what a replay asks for, and what sequences build
        g = _grudge(names, [tuple(e) for e in spec.get("cut", [])])
    elif shape in ROLE_SHAPES:
        target = {"leader-from-followers": "leader"}.get(shape, shape)
        if spec.get("key") is not None and target == "leader":
            target = f"leader-of:{spec['key']}"
        chosen, seen = resolve(ctx, target)
        lone = chosen[0].name
        others = [y for y in names if y != lone]
        if shape == "leader-from-followers":
            from nemesis.faults import broker_port
            followers = [ctx.node_of(b) for b in ctx.roles.replicas_of(seen.get("key"))] if seen.get("key") else []
            followers = [f.name for f in followers if f is not None and f.name != lone] or others
            g = _grudge(names, [])
            g.add_edges_from(((lone, y) for y in followers), ports=[broker_port(ctx)])
        else:
            g = _grudge(names, [(lone, y) for y in others])
        if shape == "leader" and "key" in seen:
            seen = {**seen, "isolated": lone}
    else:
        raise ValueError(f"unknown partition shape {shape!r}; use one of {', '.join(ALL_SHAPES)}")
    placement = spec.get("clients", "all")
    if placement not in CLIENT_PLACEMENTS:
        raise ValueError(f"unknown clients placement {placement!r}; use one of {', '.join(CLIENT_PLACEMENTS)}")
    if placement != "all":
        groups = components(g)
        side = groups[-1] if placement == "majority" else groups[0]
        g.add_node(CLIENTS)
        g.add_edges_from((CLIENTS, y) for y in names if y not in side)
    return g, seen


def components(grudge: nx.Graph) -> list[list[str]]:
    """The groups that can still talk among themselves (components of the complement), for display."""
    return sorted((sorted(c) for c in nx.connected_components(nx.complement(grudge))), key=lambda c: (len(c), c))

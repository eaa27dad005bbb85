"""Network partition shapes as networkx graphs.

A shape is a "grudge" graph over node names: an edge (a, b) means a and b
cannot talk to each other. Shapes are pure functions of the node names and a
seeded random.Random, so a schedule is reproducible.
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


def components(grudge: nx.Graph) -> list[list[str]]:
    """The groups that can still talk among themselves (components of the complement), for display."""
    return sorted((sorted(c) for c in nx.connected_components(nx.complement(grudge))), key=lambda c: (len(c), c))

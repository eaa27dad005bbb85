"""Transactional anomalies: precommitted reads and dependency cycles (G0, G1c).

Ops (send, poll and txn completions that are ok or info) are vertices. Edges:

- wr: op A sent value v to key k and op B polled v from k (B != A);
- ww (only with ww-deps): A sent v1 and B sent v2, the next value after v1 in
  k's offset order;
- process: A and B ran on the same process, A first;
- realtime: A completed before B was invoked (transitively reduced).

A cycle of ww edges alone is G0; one that needs a wr edge is G1c. A cycle that
also needs process (realtime) edges gets the -process (-realtime) suffix, as
in Elle. One cycle per strongly connected component and kind is reported,
step by step.
"""
from __future__ import annotations

from collections import deque

import networkx as nx

MAX_COMPONENTS = 100
_PREFERENCE = ("ww", "wr", "process", "realtime")


def analyse_txns(chk):
    out = []
    ops = [o for o in chk.txn_ops if o[3] in ("ok", "info")]
    out.extend(_precommitted(ops))
    out.extend(_cycles(chk, ops))
    return out


def _precommitted(ops):
    for idx, p, inv, t, writes, reads in ops:
        for k, vs in writes.items():
            r = reads.get(k)
            if not r:
                continue
            bad = set(vs).intersection(r)
            if bad:
                v = sorted(bad, key=str)[0]
                yield "precommitted-read", {
                    "key": k, "value": v, "ops": [idx],
                    "explanation": f"op {idx} sent {v!r} to key {k} and polled it back within the same "
                                   "transaction: a consumer must never see records of a transaction that has "
                                   "not committed."}


def _graph(chk, ops):
    g = nx.DiGraph()
    nodes = {o[0] for o in ops}
    g.add_nodes_from(nodes)

    def link(a, b, kind, data):
        if a == b:
            return
        if g.has_edge(a, b):
            g[a][b]["types"].setdefault(kind, data)
        else:
            g.add_edge(a, b, types={kind: data})

    for idx, p, inv, t, writes, reads in ops:
        for k, vs in reads.items():
            for v in vs:
                w = chk.writer_of(k, v)
                if w is not None and w in nodes:
                    link(w, idx, "wr", {"key": k, "value": v})
    if chk.opts["ww-deps"]:
        for k, ks in chk.keys.items():
            prev = None
            for o in sorted(ks.log):
                v = ks.log[o]
                w = chk.writer_of(k, v)
                if w is None or w not in nodes:
                    prev = None
                    continue
                if prev is not None and prev[0] != w:
                    link(prev[0], w, "ww", {"key": k, "value": prev[1], "value'": v})
                prev = (w, v)
    last_of = {}
    for idx, p, inv, t, writes, reads in sorted(ops):
        if p in last_of:
            link(last_of[p], idx, "process", {"process": p})
        last_of[p] = idx
    # Realtime order, transitively reduced: on invoke, the predecessors are
    # the ops completed so far that no later completion has superseded.
    events = []
    for idx, p, inv, t, writes, reads in ops:
        events.append((inv if inv is not None else idx, 0, idx))
        events.append((idx, 1, idx))
    events.sort()
    frontier, preds = set(), {}
    for _, kind, op in events:
        if kind == 0:
            preds[op] = set(frontier)
        else:
            frontier -= preds.get(op, set())
            frontier.add(op)
    for b, ps in preds.items():
        for a in ps:
            link(a, b, "realtime", {})
    return g


def _cycles(chk, ops):
    if len(ops) < 2:
        return []
    g = _graph(chk, ops)
    layers = [({"ww"}, "ww", ""), ({"ww", "wr"}, "wr", ""),
              ({"ww", "wr", "process"}, "process", "-process"),
              ({"ww", "wr", "process", "realtime"}, "realtime", "-realtime")]
    found = []
    for allowed, required, suffix in layers:
        h = nx.DiGraph()
        h.add_edges_from((a, b) for a, b, d in g.edges(data=True) if allowed & d["types"].keys())
        for n, comp in enumerate(c for c in nx.strongly_connected_components(h) if len(c) > 1):
            if n >= MAX_COMPONENTS:
                break
            cyc = _cycle_through(g, h, comp, allowed, required)
            if cyc is None:
                continue
            steps = _steps(g, cyc, allowed)
            base = "G1c" if any(s["type"] == "wr" for s in steps) else "G0"
            kind = base + suffix
            found.append((kind, _record(cyc, steps, kind)))
    return found


def _cycle_through(g, h, comp, allowed, required):
    for a, b in h.subgraph(comp).edges():
        if required in g[a][b]["types"]:
            path = _bfs(h, comp, b, a)
            if path is not None:
                return [a] + path
    return None


def _bfs(h, comp, src, dst):
    prev = {src: None}
    q = deque([src])
    while q:
        x = q.popleft()
        if x == dst:
            path = []
            while x is not None:
                path.append(x)
                x = prev[x]
            return path[::-1]
        for y in h.successors(x):
            if y in comp and y not in prev:
                prev[y] = x
                q.append(y)
    return None


def _steps(g, cyc, allowed):
    steps = []
    for a, b in zip(cyc, cyc[1:]):
        types = g[a][b]["types"]
        kind = next(t for t in _PREFERENCE if t in types and t in allowed)
        d = types[kind]
        if kind == "ww":
            v2 = d["value'"]
            text = (f"op {a} sent {d['value']!r} to key {d['key']}, and op {b} sent {v2!r}, "
                    "the next value in that key's offset order")
        elif kind == "wr":
            text = f"op {a} sent {d['value']!r} to key {d['key']}, which op {b} polled"
        elif kind == "process":
            text = f"op {a} ran before op {b} on process {d['process']}"
        else:
            text = f"op {a} completed before op {b} was invoked"
        steps.append({"from": a, "to": b, "type": kind, **d, "explanation": text})
    return steps


def _record(cyc, steps, kind):
    return {"cycle": cyc, "ops": sorted(set(cyc)), "steps": steps,
            "explanation": f"{kind} cycle: " + "; ".join(s["explanation"] for s in steps)
                           + f"; so op {cyc[0]} must both precede and follow itself."}

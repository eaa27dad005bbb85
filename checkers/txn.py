"""Transactional anomalies: precommitted reads and dependency cycles (G0, G1c).

Jepsen's counterparts are precommitted-read-cases and cycles! in jepsen.tests.kafka, which hand Elle a graph
of ww and wr edges plus Elle's realtime graph. Here the vertices are the ops the fold collected (txn ops and
ops of several micro-ops; every op with --txn), completed ok or info. Edges:

- wr: op A sent value v to key k and op B polled v from k (B != A);
- ww (only with ww-deps): A sent v1 and B sent v2, the next value after v1 in
  k's offset order that a vertex sent (values of other ops in between are
  passed over: the order is transitive);
- process: A and B completed ok on the same process, A first (Elle's process graph);
- realtime: A completed ok before B was invoked (transitively reduced; an info
  op never completes, so it precedes nothing, as in Elle's realtime graph).

Process and realtime edges point forward in time, so every cycle needs a ww or
wr edge: only ops with one of those become vertices, and without any there is
no graph to build. A cycle of ww edges alone is G0; one that needs a wr edge is
G1c. A cycle that also needs process (realtime) edges gets the -process
(-realtime) suffix, as in Elle. One cycle per strongly connected component and
kind is reported, step by step.
"""
from __future__ import annotations

from collections import deque

MAX_COMPONENTS = 100
_PREFERENCE = ("ww", "wr", "process", "realtime")
_REALTIME_PREFERENCE = ("ww", "wr", "realtime", "process")


def analyse_txns(fold):
    out = []
    # A consumer must never see uncommitted records, whatever becomes of its own transaction: every outcome.
    out.extend(_precommitted([o for o in fold.txn_ops if o[4] and o[5]]))
    out.extend(_cycles(fold, [o for o in fold.txn_ops if o[3] in ("ok", "info")]))
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


def _graph(fold, ops):
    """The dependency graph, or None when no ww or wr edge exists (then no cycle can)."""
    if not fold.opts["ww-deps"] and not any(o[5] for o in ops):
        return None  # nothing read and no ww edges: no edge to start a cycle
    import networkx as nx  # only histories with a graph to build pay for the import
    g = nx.DiGraph()
    nodes = {o[0] for o in ops}

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
                w = fold.writer_of(k, v)
                if w is not None and w in nodes:
                    link(w, idx, "wr", {"key": k, "value": v})
    if fold.opts["ww-deps"]:
        _ww_edges(fold, nodes, link)
    if not g.number_of_edges():
        return None
    ops = [o for o in ops if o[0] in g]  # only ops with a ww or wr edge can be on a cycle
    last_of = {}
    for idx, p, inv, t, writes, reads in sorted(ops):
        if t != "ok":
            continue
        if p in last_of:
            link(last_of[p], idx, "process", {"process": p})
        last_of[p] = idx
    # Realtime order, transitively reduced: on invoke, the predecessors are
    # the ops completed ok so far that no later completion has superseded.
    events = []
    for idx, p, inv, t, writes, reads in ops:
        events.append((inv if inv is not None else idx, 0, idx))
        if t == "ok":
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


def _ww_edges(fold, nodes, link):
    """Each vertex's value linked to the next value of another vertex in the key's offset order."""
    for k, ks in fold.keys.items():
        prev = None
        between = 0  # values of ops that are not vertices, passed over
        for o in sorted(ks.log):
            v = ks.log[o]
            w = ks.writer(v)
            if w is None or w not in nodes:
                between += prev is not None
                continue
            if prev is not None and prev[0] != w:
                link(prev[0], w, "ww", {"key": k, "value": prev[1], "value'": v, **({"between": between}
                                                                                    if between else {})})
            prev = (w, v)
            between = 0


def _cycles(fold, ops):
    if len(ops) < 2:
        return []
    g = _graph(fold, ops)
    if g is None:
        return []
    import networkx as nx
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
            # a -realtime cycle shows real time where an edge has it and process order too (one process's
            # ops are also in real-time order); ww and wr come first, so they name the cycle
            steps = _steps(g, cyc, allowed, _REALTIME_PREFERENCE if required == "realtime" else _PREFERENCE)
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


def _steps(g, cyc, allowed, preference):
    steps = []
    for a, b in zip(cyc, cyc[1:]):
        types = g[a][b]["types"]
        kind = next(t for t in preference if t in types and t in allowed)
        d = types[kind]
        if kind == "ww":
            v2 = d["value'"]
            text = (f"op {a} sent {d['value']!r} to key {d['key']}, and op {b} sent {v2!r}, "
                    + ("the next value in that key's offset order" if "between" not in d else
                       f"a later value in that key's offset order ({d['between']} value(s) of other ops between)"))
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

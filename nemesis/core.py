"""The nemesis protocol, as Jepsen's `nemesis.clj` has it: a nemesis handles some `f`s, ops are data.

A nemesis declares the `f`s it handles and has `setup(ctx)`, `invoke(ctx, op) -> value` and
`teardown(ctx)`. `Compose` routes each op to the one nemesis that claims its `f` (two may not claim
the same one), as Jepsen's `compose` does. An op's invocation value says what is asked -- a target
(`one`, `minority`, `leader`, `leader-of:KEY`, `controller`, `n2`, ...) or a partition shape -- and
is resolved only when the op runs, against the cluster as it is then; the completion value records
the nodes actually hit and what was observed (the ISR before and after, the key and its leader).

`Roles` is the view of the system under test that role targets need; the workload provides it (the
runner knows no Kafka). Everything here reaches nodes only through clusters' Node transport.
"""
from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from clusters.base import Cluster, Node


class NemesisUnavailable(RuntimeError):
    """This environment cannot do the fault; the message says what to fix (as `acked doctor` does)."""


class Roles(Protocol):
    """Who plays which Kafka role now; every answer is fresh (a metadata request), never cached."""

    def leader_of(self, key: str) -> int | None: ...
    def replicas_of(self, key: str) -> list[int]: ...
    def isr_of(self, key: str) -> list[int]: ...
    def controller(self) -> int | None: ...
    def coordinator_of(self, group: str | None = None) -> int | None: ...
    def hot_keys(self) -> list[str]: ...


class NoRoles:
    """Roles of a cluster with no workload (tests of faults alone): role targets cannot be resolved."""

    def leader_of(self, key): return None
    def replicas_of(self, key): return []
    def isr_of(self, key): return []
    def controller(self): return None
    def coordinator_of(self, group=None): return None
    def hot_keys(self): return []


@dataclass
class Context:
    cluster: Cluster
    rng: random.Random = field(default_factory=random.Random)
    roles: Roles = field(default_factory=NoRoles)
    log: Callable[[str], None] = lambda msg: None
    #: set when the run is ending: sequences stop waiting for their conditions
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def nodes(self) -> list[Node]:
        """The broker nodes."""
        return list(self.cluster.nodes)

    @property
    def zk_nodes(self) -> list[Node]:
        return list(getattr(self.cluster, "zk_nodes", None) or self.cluster.nodes)

    def node(self, name: str) -> Node:
        for n in {*self.nodes, *self.zk_nodes}:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}; nodes: {', '.join(sorted(n.name for n in self.nodes))}")

    def node_of(self, broker_id: int | None) -> Node | None:
        return next((n for n in self.nodes if n.broker_id == broker_id), None)

    def wait(self, seconds: float) -> bool:
        """Sleep, unless the run is ending; True if it is."""
        return self.stopping.wait(max(0.0, seconds))


class Nemesis:
    """Base: `fs` are the op names it handles; `invoke` returns the completion value (recorded as info)."""

    fs: frozenset[str] = frozenset()

    def setup(self, ctx: Context) -> None:
        """Prepare nodes (chains, helper files); raise NemesisUnavailable when the fault cannot work here."""

    def invoke(self, ctx: Context, op: dict) -> Any:
        raise NotImplementedError

    def teardown(self, ctx: Context) -> None:
        """Undo everything this nemesis may have done; safe to call when nothing is active, and twice."""


class Compose(Nemesis):
    """Several nemeses as one, each op routed by its `f` (Jepsen's nemesis/compose)."""

    def __init__(self, nemeses: Iterable[Nemesis]):
        self.nemeses = list(nemeses)
        self.by_f: dict[str, Nemesis] = {}
        for n in self.nemeses:
            for f in n.fs:
                if f in self.by_f:
                    raise ValueError(f"two nemeses claim the op {f!r}: {type(self.by_f[f]).__name__} and "
                                     f"{type(n).__name__}")
                self.by_f[f] = n
        self.fs = frozenset(self.by_f)

    def setup(self, ctx: Context) -> None:
        for n in self.nemeses:
            n.setup(ctx)

    def invoke(self, ctx: Context, op: dict) -> Any:
        try:
            nemesis = self.by_f[op["f"]]
        except KeyError:
            raise ValueError(f"no nemesis handles {op['f']!r}; handled: {', '.join(sorted(self.by_f))}") from None
        return nemesis.invoke(ctx, op)

    def teardown(self, ctx: Context) -> None:
        errors = []
        for n in self.nemeses:
            try:
                n.teardown(ctx)
            except Exception as e:  # noqa: BLE001 -- tear down the others, report this one
                errors.append(f"{type(n).__name__}: {e}")
        if errors:
            raise RuntimeError("teardown failed: " + "; ".join(errors))


# ---- targets -------------------------------------------------------------------------------------------

#: targets that name a set of nodes without asking the system who plays what
RANDOM_TARGETS = ("one", "minority", "majority", "all")
#: targets resolved through Roles when the op runs
ROLE_TARGETS = ("leader", "primaries", "controller", "coordinator", "replicas", "leader-of:KEY", "followers-of:KEY",
                "replicas-of:KEY")
TARGETS = RANDOM_TARGETS + ROLE_TARGETS


def check_target(target: str, node_names: Iterable[str] | None = None) -> None:
    """Raise ValueError with what to write instead when `target` is not a target."""
    if target in RANDOM_TARGETS or target in ("leader", "primaries", "controller", "coordinator", "replicas"):
        return
    kind, _, arg = target.partition(":")
    if kind in ("leader-of", "followers-of", "replicas-of") and arg:
        return
    parts = target.split("+")
    known = set(node_names) if node_names is not None else None
    if all((n in known) if known is not None else re.fullmatch(r"n\d+|zk", n) for n in parts):
        return
    raise ValueError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}, or node names like n1 or n1+n2")


def is_role_target(target: str) -> bool:
    return target.partition(":")[0] in ("leader", "primaries", "controller", "coordinator", "replicas", "leader-of",
                                         "followers-of", "replicas-of")


def hot_key(ctx: Context) -> str | None:
    keys = ctx.roles.hot_keys()
    return ctx.rng.choice(keys) if keys else None


def resolve(ctx: Context, target: str, pool: list[Node] | None = None) -> tuple[list[Node], dict]:
    """The nodes a target names now, and what was observed to choose them (recorded in the completion).

    A role that cannot be resolved (no leader now, no hot key) falls back to one random node, and says so.
    """
    pool = list(pool if pool is not None else ctx.nodes)
    n = len(pool)
    shuffled = list(pool)
    ctx.rng.shuffle(shuffled)
    if target == "one":
        return shuffled[:1], {}
    if target == "minority":
        return shuffled[:max(1, (n - 1) // 2)], {}
    if target == "majority":
        return shuffled[:n // 2 + 1], {}
    if target == "all":
        return sorted(pool, key=lambda x: x.name), {}
    seen: dict[str, Any] = {}
    chosen: list[Node] = []
    kind, _, arg = target.partition(":")
    if kind in ("leader", "leader-of", "followers-of", "replicas", "replicas-of"):
        key = arg or hot_key(ctx)
        seen["key"] = key
        if key is not None:
            leader = ctx.roles.leader_of(key)
            seen["leader"] = leader
            seen["isr"] = ctx.roles.isr_of(key)
            if kind == "followers-of":
                chosen = [x for x in (ctx.node_of(b) for b in ctx.roles.replicas_of(key)) if x and x.broker_id != leader]
            elif kind in ("replicas", "replicas-of"):
                seen["replicas"] = ctx.roles.replicas_of(key)
                chosen = [x for x in (ctx.node_of(b) for b in seen["replicas"]) if x]
            else:
                chosen = [x for x in [ctx.node_of(leader)] if x]
    elif kind == "primaries":
        keys = ctx.roles.hot_keys()
        leaders = sorted({b for b in (ctx.roles.leader_of(k) for k in keys) if b is not None})
        seen["leaders"] = leaders
        chosen = [x for x in (ctx.node_of(b) for b in leaders) if x]
    elif kind == "controller":
        seen["controller"] = ctx.roles.controller()
        chosen = [x for x in [ctx.node_of(seen["controller"])] if x]
    elif kind == "coordinator":
        seen["coordinator"] = ctx.roles.coordinator_of()
        chosen = [x for x in [ctx.node_of(seen["coordinator"])] if x]
    else:
        names = target.split("+")
        chosen = [x for x in pool if x.name in names]
        if not chosen:
            raise ValueError(f"target {target!r} names no node of this cluster ({', '.join(x.name for x in pool)})")
        return chosen, {}
    chosen = [x for x in chosen if x in pool]
    if not chosen:
        seen["fallback"] = f"{target} could not be resolved now; one random node instead"
        chosen = shuffled[:1]
    return chosen, seen


def names(nodes: Iterable[Node]) -> list[str]:
    return sorted(n.name for n in nodes)

"""Operation generators for the queue workload, as data: pure and deterministic for a seed.

A generator does no I/O. The runner asks it for the next operation of a
worker slot (telling it the time since the workload began) and for the pause
before the next invocation, and tells it how each operation completed; for the
same seed and the same sequence of calls it returns the same operations. As in
Jepsen, `concurrency` worker slots each run one logical process at a time; a
process whose operation ended in `info` (or a client crash) is never reused:
the slot continues with process id `old + concurrency` and fresh clients.

Client crashes come by time, as Jepsen's `--crash-client-interval`: a single
client runs for roughly that many seconds before it is crashed, so over all
slots a crash is due every interval/concurrency seconds (staggered). Tied to
the op count instead, clients would live shorter the faster the cluster is,
and a fast run would mostly measure client start-up.

Keys: a bounded set of active keys (one key = one partition of a topic). Each
key gets a Zipf-distributed budget of writes when it is created; once spent,
the key is retired and a fresh key takes its place, so the history has many
short logs and a few long ones. Values are globally increasing integers, hence
unique per key.
"""
from __future__ import annotations

import bisect
import dataclasses
import itertools
import random
from typing import Any

#: the default mix of operations (relative weights); client crashes come by time (crash_client_interval)
DEFAULT_MIX = {"send": 50, "poll": 40, "reassign": 8}


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    seed: int = 0
    concurrency: int = 6
    #: invocations per second over all slots; 0: no pause between invocations
    rate: float = 100.0
    key_count: int = 8
    max_writes_per_key: int = 1024
    zipf_exponent: float = 1.0
    #: "assign" or "subscribe": which op a consumer uses to pick its keys
    sub_via: str = "assign"
    #: send micro-ops per send op, uniform over 1..max_sends_per_op, all to one key
    max_sends_per_op: int = 1
    #: keys per assign/subscribe: uniform over 1..max_keys_per_assign (bounded by the active keys)
    max_keys_per_assign: int = 4
    mix: tuple[tuple[str, int], ...] = tuple(DEFAULT_MIX.items())
    #: roughly how many seconds a single client runs before it is crashed; 0: never
    crash_client_interval: float = 10.0


class ZipfSampler:
    """Bounded Zipf: P(n) proportional to n**-s for n in 1..m."""

    def __init__(self, m: int, s: float):
        self._cum = list(itertools.accumulate((n ** -s) for n in range(1, m + 1)))

    def sample(self, rng: random.Random) -> int:
        return bisect.bisect_left(self._cum, rng.random() * self._cum[-1]) + 1


class QueueGenerator:
    def __init__(self, spec: GeneratorSpec):
        if spec.sub_via not in ("assign", "subscribe"):
            raise ValueError(f"sub_via must be 'assign' or 'subscribe', not {spec.sub_via!r}")
        self.spec = spec
        self._rng = random.Random(spec.seed)
        self._zipf = ZipfSampler(spec.max_writes_per_key, spec.zipf_exponent)
        self._fs = [f for f, _ in spec.mix]
        self._weights = [w for _, w in spec.mix]
        #: the process each slot currently runs
        self.processes: list[int] = list(range(spec.concurrency))
        #: keys each process has assigned or subscribed (known once the op completed ok)
        self._assigned: dict[int, list[str]] = {}
        self._next_key = 0
        self._next_value = 0
        #: active key -> writes left before it is retired
        self.budget: dict[str, int] = {}
        self.active: list[str] = []
        #: every key ever made active, in order (what the final drain reads)
        self.all_keys: list[str] = []
        self.retired: list[str] = []
        for _ in range(spec.key_count):
            self._add_key()
        #: when the next client crash is due (seconds since the workload began)
        self._next_crash = self._crash_gap() if spec.crash_client_interval > 0 else float("inf")

    def _crash_gap(self) -> float:
        """Jepsen's stagger of interval/concurrency: uniform over [0, 2 * interval / concurrency]."""
        return self._rng.uniform(0.0, 2.0 * self.spec.crash_client_interval / self.spec.concurrency)

    # ---- keys ------------------------------------------------------------------

    def _add_key(self) -> str:
        key = str(self._next_key)
        self._next_key += 1
        self.budget[key] = self._zipf.sample(self._rng)
        self.active.append(key)
        self.all_keys.append(key)
        return key

    def _spend(self, key: str) -> None:
        self.budget[key] -= 1
        if self.budget[key] <= 0:
            del self.budget[key]
            self.active.remove(key)
            self.retired.append(key)
            self._add_key()

    # ---- ops -------------------------------------------------------------------

    def next_delay(self) -> float:
        """Seconds between the previous invocation and the next one: uniform over [0, 2/rate] (Jepsen's stagger)."""
        if self.spec.rate <= 0:
            return 0.0
        return self._rng.uniform(0.0, 2.0 / self.spec.rate)

    def next_op(self, slot: int, now: float = 0.0) -> dict[str, Any]:
        """The next invocation for a worker slot at `now` (seconds since the workload began): {process, f,
        value} (the runner adds type, time and index). A due client crash goes to whichever slot asks."""
        process = self.processes[slot]
        if now >= self._next_crash:
            self._next_crash = max(self._next_crash, now - 1.0) + self._crash_gap()  # no backlog of crashes
            return {"process": process, "f": "crash", "value": None}
        f = self._rng.choices(self._fs, self._weights)[0]
        if f == "poll" and not self._assigned.get(process):
            f = "reassign"  # a consumer must pick its keys before a poll can return anything
        if f == "send":
            # one key per op: its sends leave as consecutive requests to one partition, the case
            # max.in.flight.requests.per.connection is about
            sends = []
            key = self._rng.choice(self.active)
            for _ in range(self._rng.randint(1, self.spec.max_sends_per_op)):
                sends.append(["send", key, self._next_value])
                self._next_value += 1
                self._spend(key)
                if key not in self.active:   # the key's writes are spent: the rest of the op goes nowhere
                    break
            return {"process": process, "f": "send", "value": sends}
        if f == "poll":
            return {"process": process, "f": "poll", "value": [["poll"]]}
        if f == "reassign":
            n = self._rng.randint(1, min(self.spec.max_keys_per_assign, len(self.active)))
            keys = sorted(self._rng.sample(self.active, n), key=int)
            return {"process": process, "f": self.spec.sub_via, "value": keys}
        if f == "crash":
            return {"process": process, "f": "crash", "value": None}
        raise ValueError(f"unknown op {f!r} in the mix")

    def complete(self, slot: int, op: dict[str, Any], type_: str) -> int:
        """Record how a slot's op ended; returns the process the slot runs next (a new one after info)."""
        process = self.processes[slot]
        if type_ == "info" or op["f"] == "crash":
            self._assigned.pop(process, None)
            process += self.spec.concurrency
            self.processes[slot] = process
        elif type_ == "ok" and op["f"] in ("assign", "subscribe"):
            self._assigned[process] = list(op["value"])
        return process


def take(gen: QueueGenerator, n: int, seconds_per_op: float = 0.01) -> list[dict[str, Any]]:
    """The first n ops of a generator driven round-robin over its slots, one every `seconds_per_op`,
    every op completing ok except crashes; for tests and for inspecting a generator's shape."""
    ops = []
    for i in range(n):
        slot = i % gen.spec.concurrency
        op = gen.next_op(slot, i * seconds_per_op)
        ops.append(op)
        gen.complete(slot, op, "info" if op["f"] == "crash" else "ok")
    return ops
